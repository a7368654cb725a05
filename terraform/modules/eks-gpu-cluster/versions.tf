terraform {
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = ">= 3.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.38"
    }
    # kubectl_manifest applies the RayService before its CRD exists at plan time, which
    # kubernetes_manifest cannot (it reads the CRD schema while planning).
    kubectl = {
      source  = "alekc/kubectl"
      version = ">= 2.1"
    }
  }
}
