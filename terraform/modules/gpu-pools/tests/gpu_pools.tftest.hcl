# The production pools (configs/production.yaml), then one run per validation rule: each bad
# input breaks exactly that rule (tests/terraform/test_gpu_pools_module.py checks the count).

variables {
  gpu_pools = {
    rtx4090 = {
      accelerator     = "RTX4090"
      capacity_type   = "BYO"
      gpus_per_node   = 2
      min_nodes       = 0
      max_nodes       = 4
      tensor_parallel = 2
      max_model_len   = 40960
      quantization    = "fp8"
      role            = "short"
    }
    short = {
      accelerator     = "L40S"
      instance_type   = "g6e.12xlarge"
      gpus_per_node   = 4
      min_nodes       = 1
      max_nodes       = 4
      tensor_parallel = 2
      max_model_len   = 40960
      role            = "short"
    }
    long = {
      accelerator     = "H100"
      instance_type   = "p5.4xlarge"
      gpus_per_node   = 1
      min_nodes       = 1
      max_nodes       = 4
      tensor_parallel = 1
      max_model_len   = 40960
      role            = "long"
    }
  }
}

run "production_pools" {
  command = plan

  assert {
    condition     = output.ray_resources["long"] == { GPU = 1, "accelerator_type:H100" = 1 }
    error_message = "long (H100) nodes must advertise GPU = 1 and accelerator_type:H100 = 1."
  }
  assert {
    condition     = output.ray_resources["short"] == { GPU = 4, "accelerator_type:L40S" = 1 }
    error_message = "short (L40S) nodes must advertise GPU = 4 and accelerator_type:L40S = 1."
  }
  assert {
    condition     = output.ray_resources["rtx4090"] == { GPU = 2, rtx4090 = 2 }
    error_message = "RTX 4090 nodes must advertise the custom resource rtx4090, one per GPU."
  }
  assert {
    condition = output.serve_hints["rtx4090"] == {
      accelerator_type     = null
      custom_resources     = { rtx4090 = 1 }
      tensor_parallel_size = 2
      placement_strategy   = "STRICT_PACK"
      max_model_len        = 40960
      quantization         = "fp8"
      model_source         = "/models/Magistral-Small-2506"
    }
    error_message = "rtx4090 serve hints must match configs/production.yaml."
  }
  assert {
    condition = alltrue([
      output.serve_hints["short"].accelerator_type == "L40S",
      output.serve_hints["short"].tensor_parallel_size == 2,
      output.serve_hints["short"].max_model_len == 40960,
      length(output.serve_hints["short"].custom_resources) == 0,
    ])
    error_message = "short serve hints must match configs/production.yaml (L40S, TP 2, 40960)."
  }
  assert {
    condition = alltrue([
      output.serve_hints["long"].accelerator_type == "H100",
      output.serve_hints["long"].tensor_parallel_size == 1,
      output.serve_hints["long"].max_model_len == 40960,
      output.serve_hints["long"].quantization == null,
    ])
    error_message = "long serve hints must match configs/production.yaml (H100, TP 1, 40960)."
  }
  assert {
    condition = alltrue([
      output.pools["rtx4090"].weights_gb == 24,
      output.pools["short"].weights_gb == 48,
      output.pools["rtx4090"].instance_type == null,
      output.pools["short"].capacity_type == "ON_DEMAND",
      output.pools["long"].disk_gb == 300,
      output.pools["short"].replicas_per_node == 2,
    ])
    error_message = "pools must fill the optional attributes and halve the weights for fp8."
  }
  assert {
    condition     = output.node_labels["short"]["magistral.ai/pool"] == "short" && output.node_labels["long"]["ray.io/accelerator-type"] == "H100"
    error_message = "node labels must name the pool and Ray's accelerator type."
  }
  assert {
    condition = output.node_taints["long"] == [
      { key = "nvidia.com/gpu", value = "present", effect = "NoSchedule", eks_effect = "NO_SCHEDULE" },
      { key = "magistral.ai/pool", value = "long", effect = "NoSchedule", eks_effect = "NO_SCHEDULE" },
    ]
    error_message = "GPU nodes must be tainted nvidia.com/gpu=present:NoSchedule and with their pool."
  }
  assert {
    condition     = output.ray_start_args["rtx4090"] == "ray start --address=RAY_HEAD_IP:6379 --num-gpus=2 --resources='{\"rtx4090\":2}' --labels=magistral.ai/accelerator=RTX4090,magistral.ai/pool=rtx4090,magistral.ai/role=short"
    error_message = "rtx4090 hosts must join with --num-gpus=2 and the rtx4090 resource."
  }
}

# --- gpu_pools: one run per validation rule ---------------------------------------------------

run "rejects_pool_name_not_dns_label" {
  command = plan
  variables {
    gpu_pools = {
      Bad_Name = { accelerator = "H100", instance_type = "p5.4xlarge", gpus_per_node = 1, min_nodes = 0, max_nodes = 1, tensor_parallel = 1, max_model_len = 4096, role = "long" }
    }
  }
  expect_failures = [var.gpu_pools]
}

run "rejects_role_not_dns_label" {
  command = plan
  variables {
    gpu_pools = {
      "bad-role" = { accelerator = "H100", instance_type = "p5.4xlarge", gpus_per_node = 1, min_nodes = 0, max_nodes = 1, tensor_parallel = 1, max_model_len = 4096, role = "Long Prompts" }
    }
  }
  expect_failures = [var.gpu_pools]
}

run "rejects_unknown_accelerator" {
  command = plan
  variables {
    gpu_pools = {
      "bad-accel" = { accelerator = "V100", instance_type = "p3.2xlarge", gpus_per_node = 1, min_nodes = 0, max_nodes = 1, tensor_parallel = 1, max_model_len = 4096, role = "long" }
    }
  }
  expect_failures = [var.gpu_pools]
}

run "rejects_min_nodes_above_max_nodes" {
  command = plan
  variables {
    gpu_pools = {
      "bad-nodes" = { accelerator = "H100", instance_type = "p5.4xlarge", gpus_per_node = 1, min_nodes = 3, max_nodes = 1, tensor_parallel = 1, max_model_len = 4096, role = "long" }
    }
  }
  expect_failures = [var.gpu_pools]
}

run "rejects_tensor_parallel_not_power_of_two" {
  command = plan
  variables {
    gpu_pools = {
      "bad-tp" = { accelerator = "H100", instance_type = "p5.48xlarge", gpus_per_node = 8, min_nodes = 0, max_nodes = 1, tensor_parallel = 3, max_model_len = 4096, role = "long" }
    }
  }
  expect_failures = [var.gpu_pools]
}

run "rejects_weights_that_do_not_fit" {
  command = plan
  variables {
    # fp8 weights (24 GB) > 1 x 24 GB x 0.85 on a single L4.
    gpu_pools = {
      "bad-fit" = { accelerator = "L4", instance_type = "g6.xlarge", gpus_per_node = 1, min_nodes = 0, max_nodes = 1, tensor_parallel = 1, max_model_len = 4096, quantization = "fp8", role = "short" }
    }
  }
  expect_failures = [var.gpu_pools]
}

run "rejects_max_model_len_beyond_context" {
  command = plan
  variables {
    gpu_pools = {
      "bad-len" = { accelerator = "H100", instance_type = "p5.4xlarge", gpus_per_node = 1, min_nodes = 0, max_nodes = 1, tensor_parallel = 1, max_model_len = 65536, role = "long" }
    }
  }
  expect_failures = [var.gpu_pools]
}

run "rejects_unknown_capacity_type" {
  command = plan
  variables {
    gpu_pools = {
      "bad-capacity" = { accelerator = "H100", instance_type = "p5.4xlarge", capacity_type = "RESERVED", gpus_per_node = 1, min_nodes = 0, max_nodes = 1, tensor_parallel = 1, max_model_len = 4096, role = "long" }
    }
  }
  expect_failures = [var.gpu_pools]
}

run "rejects_cloud_pool_without_instance_type" {
  command = plan
  variables {
    gpu_pools = {
      "bad-byo" = { accelerator = "RTX4090", gpus_per_node = 2, min_nodes = 0, max_nodes = 1, tensor_parallel = 2, max_model_len = 4096, quantization = "fp8", role = "short" }
    }
  }
  expect_failures = [var.gpu_pools]
}

run "rejects_unknown_quantization" {
  command = plan
  variables {
    gpu_pools = {
      "bad-quant" = { accelerator = "H100", instance_type = "p5.4xlarge", gpus_per_node = 1, min_nodes = 0, max_nodes = 1, tensor_parallel = 1, max_model_len = 4096, quantization = "awq", role = "long" }
    }
  }
  expect_failures = [var.gpu_pools]
}

# --- the other variables ----------------------------------------------------------------------

run "rejects_non_positive_model_weights" {
  command = plan
  variables {
    model_weights_gb = 0
  }
  expect_failures = [var.model_weights_gb]
}

run "rejects_vram_headroom_out_of_range" {
  command = plan
  variables {
    # Negative: more VRAM than exists, so only this rule fails (the weights still fit).
    vram_headroom = -0.1
  }
  expect_failures = [var.vram_headroom]
}

run "rejects_relative_model_dir" {
  command = plan
  variables {
    model_dir = "models/Magistral-Small-2506"
  }
  expect_failures = [var.model_dir]
}

run "rejects_ray_head_address_without_port" {
  command = plan
  variables {
    ray_head_address = "10.0.0.5"
  }
  expect_failures = [var.ray_head_address]
}
