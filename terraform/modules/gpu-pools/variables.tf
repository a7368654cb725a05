# Every rule names the offending pools in its message. Each pool rule checks one thing and
# lets the others pass (an unknown accelerator is reported once, not also as "does not fit").

variable "gpu_pools" {
  description = <<-EOT
    GPU pools of the Magistral Small 2506 service, keyed by pool name (the router's pool name).
    accelerator: H100 | A100 | L40S | L4 | RTX4090. instance_type: cloud instance type, null for
    bring-your-own hosts (capacity_type BYO). gpus_per_node: GPUs on one node. min_nodes /
    max_nodes: node group bounds. tensor_parallel: GPUs per vLLM replica (one node).
    max_model_len: context of the pool's engines. quantization: null (bf16) or "fp8".
    role: what the router uses the pool for (short, long, overflow, ...).
  EOT
  type = map(object({
    accelerator     = string
    instance_type   = optional(string)
    gpus_per_node   = number
    min_nodes       = number
    max_nodes       = number
    capacity_type   = optional(string, "ON_DEMAND")
    disk_gb         = optional(number, 300)
    tensor_parallel = number
    max_model_len   = number
    quantization    = optional(string)
    role            = string
  }))

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", name))])
    error_message = "gpu_pools: pool names must be DNS labels (lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit); not: ${join(", ", [for name, p in var.gpu_pools : name if !can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", name))])}."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", p.role))])
    error_message = "gpu_pools: role must be a DNS label such as short, long or overflow (it becomes a node and Ray label value); pools: ${join(", ", [for name, p in var.gpu_pools : name if !can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", p.role))])}."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : contains(["H100", "A100", "L40S", "L4", "RTX4090"], p.accelerator)])
    error_message = "gpu_pools: accelerator must be one of H100, A100, L40S, L4, RTX4090; pools: ${join(", ", [for name, p in var.gpu_pools : "${name} (${p.accelerator})" if !contains(["H100", "A100", "L40S", "L4", "RTX4090"], p.accelerator)])}."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : floor(p.min_nodes) == p.min_nodes && floor(p.max_nodes) == p.max_nodes && p.min_nodes >= 0 && p.min_nodes <= p.max_nodes])
    error_message = "gpu_pools: min_nodes and max_nodes must be whole numbers with 0 <= min_nodes <= max_nodes; pools: ${join(", ", [for name, p in var.gpu_pools : "${name} (min ${p.min_nodes}, max ${p.max_nodes})" if !(floor(p.min_nodes) == p.min_nodes && floor(p.max_nodes) == p.max_nodes && p.min_nodes >= 0 && p.min_nodes <= p.max_nodes)])}."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : contains([1, 2, 4, 8, 16], p.tensor_parallel) && floor(p.gpus_per_node) == p.gpus_per_node && p.tensor_parallel <= p.gpus_per_node])
    error_message = "gpu_pools: tensor_parallel must be a power of two (1, 2, 4, 8, 16) and at most gpus_per_node (a whole number): a replica's GPUs sit on one node; pools: ${join(", ", [for name, p in var.gpu_pools : "${name} (tensor_parallel ${p.tensor_parallel}, gpus_per_node ${p.gpus_per_node})" if !(contains([1, 2, 4, 8, 16], p.tensor_parallel) && floor(p.gpus_per_node) == p.gpus_per_node && p.tensor_parallel <= p.gpus_per_node)])}."
  }

  validation {
    # Unknown accelerators pass here (the accelerator rule reports them).
    condition = alltrue([
      for name, p in var.gpu_pools :
      (p.quantization == "fp8" ? var.model_weights_gb / 2 : var.model_weights_gb)
      <= p.tensor_parallel * lookup(local.vram_gb, p.accelerator, 1000000000) * (1 - var.vram_headroom)
    ])
    error_message = "gpu_pools: the model weights (model_weights_gb, halved for fp8) must fit in tensor_parallel x the accelerator's VRAM x (1 - vram_headroom); pools: ${join(", ", [for name, p in var.gpu_pools : format("%s (%.1f GB of weights > %.1f GB usable on %d x %s)", name, (p.quantization == "fp8" ? var.model_weights_gb / 2 : var.model_weights_gb), p.tensor_parallel * lookup(local.vram_gb, p.accelerator, 1000000000) * (1 - var.vram_headroom), p.tensor_parallel, p.accelerator) if(p.quantization == "fp8" ? var.model_weights_gb / 2 : var.model_weights_gb) > p.tensor_parallel * lookup(local.vram_gb, p.accelerator, 1000000000) * (1 - var.vram_headroom)])}."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : floor(p.max_model_len) == p.max_model_len && p.max_model_len >= 1 && p.max_model_len <= 40960])
    error_message = "gpu_pools: max_model_len must be a whole number from 1 to 40960 (Magistral Small 2506's context); pools: ${join(", ", [for name, p in var.gpu_pools : "${name} (${p.max_model_len})" if !(floor(p.max_model_len) == p.max_model_len && p.max_model_len >= 1 && p.max_model_len <= 40960)])}."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : contains(["ON_DEMAND", "SPOT", "BYO"], p.capacity_type)])
    error_message = "gpu_pools: capacity_type must be ON_DEMAND, SPOT or BYO; pools: ${join(", ", [for name, p in var.gpu_pools : "${name} (${p.capacity_type})" if !contains(["ON_DEMAND", "SPOT", "BYO"], p.capacity_type)])}."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : (p.capacity_type == "BYO") == (p.instance_type == null)])
    error_message = "gpu_pools: a BYO (bring-your-own hosts) pool has no instance_type, and a cloud pool (ON_DEMAND or SPOT) needs one; pools: ${join(", ", [for name, p in var.gpu_pools : name if(p.capacity_type == "BYO") != (p.instance_type == null)])}."
  }

  validation {
    condition     = alltrue([for name, p in var.gpu_pools : p.quantization == null || p.quantization == "fp8"])
    error_message = "gpu_pools: quantization must be null (bf16 weights) or \"fp8\"; pools: ${join(", ", [for name, p in var.gpu_pools : name if !(p.quantization == null || p.quantization == "fp8")])}."
  }
}

variable "model_weights_gb" {
  description = "Size of the model weights in GB at bf16 (Magistral Small 2506: 24B parameters x 2 bytes)."
  type        = number
  default     = 48

  validation {
    condition     = var.model_weights_gb > 0
    error_message = "model_weights_gb must be > 0."
  }
}

variable "vram_headroom" {
  description = "Fraction of each GPU's VRAM kept free of weights (KV cache, activations, CUDA graphs)."
  type        = number
  default     = 0.15

  validation {
    condition     = var.vram_headroom >= 0 && var.vram_headroom < 1
    error_message = "vram_headroom must be in [0, 1)."
  }
}

variable "model_dir" {
  description = "Where every GPU node holds the model files (params.json, consolidated.safetensors, tekken.json)."
  type        = string
  default     = "/models/Magistral-Small-2506"

  validation {
    condition     = startswith(var.model_dir, "/")
    error_message = "model_dir must be an absolute path."
  }
}

variable "ray_head_address" {
  description = "host:port of the Ray head (GCS) that bring-your-own hosts join with `ray start --address`."
  type        = string
  default     = "RAY_HEAD_IP:6379"

  validation {
    condition     = can(regex("^[^\\s:]+:[0-9]+$", var.ray_head_address))
    error_message = "ray_head_address must be host:port, e.g. 10.0.0.5:6379."
  }
}
