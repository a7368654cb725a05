variable "region" {
  description = "AWS region (one with the pools' GPU instance types: g6e for L40S, p5 for H100)."
  type        = string
}

variable "cluster_name" {
  description = "EKS cluster name."
  type        = string
  default     = "magistral"
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "subnet_ids" {
  description = "Private subnets (two or more AZs, with a NAT gateway for image and weight downloads)."
  type        = list(string)
}

variable "gpu_subnet_ids" {
  description = "Subnets of the GPU node groups; empty: subnet_ids."
  type        = list(string)
  default     = []
}

variable "endpoint_public_access" {
  description = "Public API endpoint, limited to public_access_cidrs. Default: private only (run Terraform from inside the VPC or over a VPN)."
  type        = bool
  default     = false
}

variable "public_access_cidrs" {
  description = "CIDRs allowed to reach the public API endpoint."
  type        = list(string)
  default     = []
}

variable "admin_principal_arns" {
  description = "IAM principals given cluster-admin besides the creator."
  type        = list(string)
  default     = []
}

variable "gpu_pools" {
  description = "The GPU pools, as modules/gpu-pools takes them (its variable gpu_pools documents every field). Names match the pools of the serve config."
  type        = any
}

variable "ray_image" {
  description = "Image with Ray 2.60.0 and this repository installed with the vllm-gpu extra (pip install '.[vllm-gpu]')."
  type        = string
}

variable "kuberay_chart_version" {
  description = "kuberay-operator Helm chart version."
  type        = string
  default     = "1.7.0"
}

variable "model_source" {
  description = "hf: each node downloads the weights from the Hugging Face hub; s3: from the mirror at model_s3_uri."
  type        = string
  default     = "hf"
}

variable "model_s3_uri" {
  description = "S3 mirror of the model repository's files (model_source = s3), e.g. s3://my-models/Magistral-Small-2506."
  type        = string
  default     = ""
}

variable "hf_token" {
  description = "Optional Hugging Face token (set TF_VAR_hf_token)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "ledger_url" {
  description = "postgresql://user:password@host:5432/db of the shared quota/usage ledger (set TF_VAR_ledger_url; never in a tfvars file)."
  type        = string
  sensitive   = true
}

variable "serve_config_file" {
  description = "Ray Serve config deployed as the RayService's serveConfigV2; null: configs/production.yaml of this repository."
  type        = string
  default     = null
}

variable "tenants_file" {
  description = "tenants.yaml for production (keys as api_key_sha256 digests; manage it with magistral-tenants). Not the repository's demo file."
  type        = string
}

variable "prices_file" {
  description = "prices.yaml; null: configs/prices.yaml of this repository."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags on every AWS resource."
  type        = map(string)
  default     = {}
}
