# Magistral Small 2506 on EKS: the GPU pools (modules/gpu-pools, provider-free) drive an EKS
# cluster with one managed node group per cloud pool, KubeRay and the RayService
# (modules/eks-gpu-cluster).

provider "aws" {
  region = var.region
}

locals {
  repo_root = "${path.module}/../../.."
  model_dir = "/models/Magistral-Small-2506" # where the serve config expects the model files

  eks_exec = {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", module.eks_gpu_cluster.cluster_name, "--region", var.region]
  }
}

provider "kubernetes" {
  host                   = module.eks_gpu_cluster.cluster_endpoint
  cluster_ca_certificate = base64decode(module.eks_gpu_cluster.cluster_certificate_authority_data)

  exec {
    api_version = local.eks_exec.api_version
    command     = local.eks_exec.command
    args        = local.eks_exec.args
  }
}

provider "helm" {
  kubernetes = {
    host                   = module.eks_gpu_cluster.cluster_endpoint
    cluster_ca_certificate = base64decode(module.eks_gpu_cluster.cluster_certificate_authority_data)
    exec                   = local.eks_exec
  }
}

provider "kubectl" {
  host                   = module.eks_gpu_cluster.cluster_endpoint
  cluster_ca_certificate = base64decode(module.eks_gpu_cluster.cluster_certificate_authority_data)
  load_config_file       = false

  exec {
    api_version = local.eks_exec.api_version
    command     = local.eks_exec.command
    args        = local.eks_exec.args
  }
}

module "gpu_pools" {
  source = "../../modules/gpu-pools"

  gpu_pools = var.gpu_pools
  model_dir = local.model_dir
}

module "eks_gpu_cluster" {
  source = "../../modules/eks-gpu-cluster"

  cluster_name           = var.cluster_name
  kubernetes_version     = var.kubernetes_version
  subnet_ids             = var.subnet_ids
  gpu_subnet_ids         = var.gpu_subnet_ids
  endpoint_public_access = var.endpoint_public_access
  public_access_cidrs    = var.public_access_cidrs
  admin_principal_arns   = var.admin_principal_arns
  tags                   = var.tags

  pools         = module.gpu_pools.pools
  node_labels   = module.gpu_pools.node_labels
  node_taints   = module.gpu_pools.node_taints
  ray_resources = module.gpu_pools.ray_resources
  ray_labels    = module.gpu_pools.ray_labels

  kuberay_chart_version = var.kuberay_chart_version
  ray_image             = var.ray_image
  serve_config          = file(coalesce(var.serve_config_file, "${local.repo_root}/configs/production.yaml"))
  tenants_yaml          = file(var.tenants_file)
  prices_yaml           = file(coalesce(var.prices_file, "${local.repo_root}/configs/prices.yaml"))
  ledger_url            = var.ledger_url

  model_source = var.model_source
  model_s3_uri = var.model_s3_uri
  hf_token     = var.hf_token
  model_dir    = local.model_dir
}
