output "kubeconfig_command" {
  description = "Writes a kubeconfig entry for the cluster."
  value       = module.eks_gpu_cluster.kubeconfig_command
}

output "gpu_node_groups" {
  description = "The managed node group of each cloud pool."
  value       = module.eks_gpu_cluster.gpu_node_groups
}

output "serve_endpoint" {
  description = "The OpenAI-compatible endpoint inside the cluster (port-forward it, or put a load balancer in front)."
  value       = "http://${module.eks_gpu_cluster.serve_service}.${module.eks_gpu_cluster.namespace}.svc:8000/v1"
}

output "byo_ray_start_commands" {
  description = "For each bring-your-own pool: the command its hosts run to join the Ray cluster."
  value       = { for name in module.eks_gpu_cluster.byo_pools : name => module.gpu_pools.ray_start_args[name] }
}

output "serve_hints" {
  description = "Engine settings per pool that the serve config must agree with."
  value       = module.gpu_pools.serve_hints
}
