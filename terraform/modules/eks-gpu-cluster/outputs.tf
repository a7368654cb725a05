output "cluster_name" {
  description = "EKS cluster name."
  value       = aws_eks_cluster.this.name
}

output "cluster_arn" {
  description = "EKS cluster ARN."
  value       = aws_eks_cluster.this.arn
}

output "cluster_endpoint" {
  description = "API server endpoint (private unless endpoint_public_access)."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64 CA certificate of the API server."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "node_role_arn" {
  description = "IAM role of every node (system and GPU)."
  value       = aws_iam_role.node.arn
}

output "gpu_node_groups" {
  description = "Per cloud pool: its managed node group (BYO pools have none)."
  value = {
    for name, group in aws_eks_node_group.gpu : name => {
      node_group_name = group.node_group_name
      instance_types  = group.instance_types
      capacity_type   = group.capacity_type
      min_nodes       = group.scaling_config[0].min_size
      max_nodes       = group.scaling_config[0].max_size
    }
  }
}

output "byo_pools" {
  description = "Pools without a node group: their hosts join the Ray cluster themselves (module.gpu_pools.ray_start_args)."
  value       = keys(local.byo_pools)
}

output "namespace" {
  description = "Namespace of the RayService."
  value       = kubernetes_namespace_v1.magistral.metadata[0].name
}

output "serve_service" {
  description = "Kubernetes Service (port 8000) in front of the Serve proxies, created by KubeRay."
  value       = "${var.rayservice_name}-serve-svc"
}

output "kubeconfig_command" {
  description = "Writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --region ${local.region} --name ${aws_eks_cluster.this.name}"
}
