output "pools" {
  description = "The pools with every optional attribute filled, plus name, byo, vram_gb, weights_gb (after quantization) and replicas_per_node."
  value       = local.pools
}

output "node_labels" {
  description = "Kubernetes node labels per pool."
  value       = local.node_labels
}

output "node_taints" {
  description = "Node taints per pool: list of {key, value, effect (Kubernetes), eks_effect (aws_eks_node_group)}."
  value       = local.node_taints
}

output "ray_resources" {
  description = "Ray resources a node of each pool advertises, e.g. {GPU = 1, \"accelerator_type:H100\" = 1} or {GPU = 2, rtx4090 = 2}."
  value       = local.ray_resources
}

output "ray_labels" {
  description = "Custom Ray node labels per pool."
  value       = local.ray_labels
}

output "ray_start_args" {
  description = "Per pool, the `ray start` command a bring-your-own host of that pool runs to join the cluster."
  value       = local.ray_start_args
}

output "serve_hints" {
  description = "Per pool, the engine settings the serve config must use (accelerator_type, custom_resources per GPU, tensor_parallel_size, placement_strategy, max_model_len, quantization, model_source)."
  value       = local.serve_hints
}
