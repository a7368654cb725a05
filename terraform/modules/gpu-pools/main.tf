locals {
  # VRAM per GPU in GB. Constant: the gpu_pools validation reads it.
  vram_gb = { H100 = 80, A100 = 80, L40S = 48, L4 = 24, RTX4090 = 24 }

  # Per accelerator: VRAM per GPU; the Ray accelerator type a pool schedules on (Ray's
  # accelerator_type:<X> resource, one of ray.serve.llm's AcceleratorType values) or, where
  # there is none, a custom resource advertised once per GPU; and the type Ray 2.60's NVML
  # detection reports (node label). Ray reports a GeForce RTX 4090 as "GeForce-RTX-4090"
  # (older Ray: "G"), which ray.serve.llm does not accept as accelerator_type, so 4090 pools
  # schedule on the custom resource "rtx4090" instead.
  accelerators = {
    H100    = { vram_gb = local.vram_gb.H100, ray_accelerator_type = "H100", custom_resource = null, ray_detected_type = "H100" }
    A100    = { vram_gb = local.vram_gb.A100, ray_accelerator_type = "A100", custom_resource = null, ray_detected_type = "A100" }
    L40S    = { vram_gb = local.vram_gb.L40S, ray_accelerator_type = "L40S", custom_resource = null, ray_detected_type = "L40S" }
    L4      = { vram_gb = local.vram_gb.L4, ray_accelerator_type = "L4", custom_resource = null, ray_detected_type = "L4" }
    RTX4090 = { vram_gb = local.vram_gb.RTX4090, ray_accelerator_type = null, custom_resource = "rtx4090", ray_detected_type = "GeForce-RTX-4090" }
  }

  pools = {
    for name, p in var.gpu_pools : name => {
      name              = name
      accelerator       = p.accelerator
      instance_type     = p.instance_type
      gpus_per_node     = p.gpus_per_node
      min_nodes         = p.min_nodes
      max_nodes         = p.max_nodes
      capacity_type     = p.capacity_type
      byo               = p.capacity_type == "BYO"
      disk_gb           = p.disk_gb
      tensor_parallel   = p.tensor_parallel
      max_model_len     = p.max_model_len
      quantization      = p.quantization
      role              = p.role
      vram_gb           = local.accelerators[p.accelerator].vram_gb
      weights_gb        = p.quantization == "fp8" ? var.model_weights_gb / 2 : var.model_weights_gb
      replicas_per_node = floor(p.gpus_per_node / p.tensor_parallel)
    }
  }

  node_labels = {
    for name, p in local.pools : name => {
      "magistral.ai/pool"        = name
      "magistral.ai/role"        = p.role
      "magistral.ai/accelerator" = p.accelerator
      # What Ray's own GPU detection reports on these nodes (it sets the same Ray label itself).
      "ray.io/accelerator-type" = local.accelerators[p.accelerator].ray_detected_type
    }
  }

  # effect in Kubernetes spelling; eks_effect as aws_eks_node_group's taint block wants it.
  node_taints = {
    for name, p in local.pools : name => [
      { key = "nvidia.com/gpu", value = "present", effect = "NoSchedule", eks_effect = "NO_SCHEDULE" },
      { key = "magistral.ai/pool", value = name, effect = "NoSchedule", eks_effect = "NO_SCHEDULE" },
    ]
  }

  # Ray resources a node of the pool advertises: GPUs, plus one accelerator_type:<X> (what Ray
  # adds itself for a detected type) or the custom resource once per GPU.
  ray_resources = {
    for name, p in local.pools : name => merge(
      { GPU = p.gpus_per_node },
      local.accelerators[p.accelerator].custom_resource != null
      ? { (local.accelerators[p.accelerator].custom_resource) = p.gpus_per_node }
      : { "accelerator_type:${local.accelerators[p.accelerator].ray_accelerator_type}" = 1 },
    )
  }

  # Custom Ray node labels (ray.io/* is reserved for Ray's own labels).
  ray_labels = {
    for name, p in local.pools : name => {
      "magistral.ai/pool"        = name
      "magistral.ai/role"        = p.role
      "magistral.ai/accelerator" = p.accelerator
    }
  }

  # GPU goes in --num-gpus: `ray start` rejects "GPU" inside --resources.
  ray_start_args = {
    for name, p in local.pools : name => join(" ", [
      "ray start",
      "--address=${var.ray_head_address}",
      "--num-gpus=${p.gpus_per_node}",
      "--resources='${jsonencode({ for k, v in local.ray_resources[name] : k => v if k != "GPU" })}'",
      "--labels=${join(",", [for k, v in local.ray_labels[name] : "${k}=${v}"])}",
    ])
  }

  # What the pool's engine in the serve config (common/config.py VLLMEngine) asks for.
  serve_hints = {
    for name, p in local.pools : name => {
      accelerator_type     = local.accelerators[p.accelerator].ray_accelerator_type
      custom_resources     = { for r in compact([local.accelerators[p.accelerator].custom_resource]) : r => 1 }
      tensor_parallel_size = p.tensor_parallel
      placement_strategy   = "STRICT_PACK"
      max_model_len        = p.max_model_len
      quantization         = p.quantization
      model_source         = var.model_dir
    }
  }
}
