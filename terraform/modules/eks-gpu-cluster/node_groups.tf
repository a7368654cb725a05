locals {
  # aws_eks_node_group spells taint effects in upper snake case.
  eks_taint_effects = {
    NoSchedule         = "NO_SCHEDULE"
    PreferNoSchedule   = "PREFER_NO_SCHEDULE"
    NoExecute          = "NO_EXECUTE"
    NO_SCHEDULE        = "NO_SCHEDULE"
    PREFER_NO_SCHEDULE = "PREFER_NO_SCHEDULE"
    NO_EXECUTE         = "NO_EXECUTE"
  }
  k8s_taint_effects = {
    NO_SCHEDULE        = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE         = "NoExecute"
    NoSchedule         = "NoSchedule"
    PreferNoSchedule   = "PreferNoSchedule"
    NoExecute          = "NoExecute"
  }

  # Every GPU node carries the nvidia.com/gpu NoSchedule taint (only pods that ask for GPUs
  # land there), plus the pool's own taints; one taint per key.
  gpu_taint = { key = "nvidia.com/gpu", value = "present", effect = "NoSchedule" }
  node_taints = {
    for name, pool in var.pools : name => values(merge(
      { (local.gpu_taint.key) = local.gpu_taint },
      { for taint in lookup(var.node_taints, name, []) : taint.key => taint },
    ))
  }

  # nvidia.com/gpu.present selects the nodes of the NVIDIA device plugin DaemonSet.
  node_labels = {
    for name, pool in var.pools : name => merge(
      lookup(var.node_labels, name, {}),
      { "nvidia.com/gpu.present" = "true" },
    )
  }
}

# --- Node IAM role ----------------------------------------------------------------------------

data "aws_iam_policy_document" "node_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name_prefix        = "${var.cluster_name}-node-"
  assume_role_policy = data.aws_iam_policy_document.node_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryPullOnly",
    "AmazonSSMManagedInstanceCore", # shell access through SSM instead of SSH
  ])
  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.value}"
}

# --- Launch templates: IMDSv2, encrypted root volume, NVMe instance store ---------------------

# nodeadm (AL2023) assembles the instance-store NVMe disks into a RAID0 at /mnt/k8s-disks/0;
# the model weights land there (var.models_host_path).
locals {
  user_data = base64encode(templatefile("${path.module}/templates/al2023-user-data.tftpl", {}))
}

resource "aws_launch_template" "system" {
  name_prefix            = "${var.cluster_name}-system-"
  description            = "${var.cluster_name}: CPU nodes (Ray head, operators, add-ons)"
  update_default_version = true
  user_data              = local.user_data

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.system_node_group.disk_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.cluster_name}-system" })
  }

  tags = local.tags
}

resource "aws_launch_template" "gpu" {
  for_each               = local.cloud_pools
  name_prefix            = "${var.cluster_name}-${each.key}-"
  description            = "${var.cluster_name}: GPU pool ${each.key} (${each.value.accelerator})"
  update_default_version = true
  user_data              = local.user_data

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = each.value.disk_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  # Hop limit 1: pods cannot reach the instance role; they get credentials from Pod Identity.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.cluster_name}-${each.key}", "magistral.ai/pool" = each.key })
  }

  tags = local.tags
}

# --- Node groups ------------------------------------------------------------------------------

resource "aws_eks_node_group" "system" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "${var.cluster_name}-system"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = var.subnet_ids
  ami_type        = "AL2023_x86_64_STANDARD"
  capacity_type   = "ON_DEMAND"
  instance_types  = var.system_node_group.instance_types
  labels          = local.system_labels

  scaling_config {
    min_size     = var.system_node_group.min_nodes
    max_size     = var.system_node_group.max_nodes
    desired_size = var.system_node_group.min_nodes
  }

  launch_template {
    id      = aws_launch_template.system.id
    version = aws_launch_template.system.latest_version
  }

  update_config {
    max_unavailable = 1
  }

  tags = local.tags

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size] # the cluster autoscaler owns it
  }

  depends_on = [aws_iam_role_policy_attachment.node, aws_eks_addon.before_compute]
}

# One managed node group per cloud pool (BYO pools have none): the pool's instance type,
# capacity type, node bounds, labels and taints, on the EKS-optimised AL2023 NVIDIA AMI
# (driver and container toolkit included).
resource "aws_eks_node_group" "gpu" {
  for_each = local.cloud_pools

  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "${var.cluster_name}-${each.key}"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = local.gpu_subnet_ids
  ami_type        = "AL2023_x86_64_NVIDIA"
  capacity_type   = each.value.capacity_type
  instance_types  = [each.value.instance_type]
  labels          = local.node_labels[each.key]

  dynamic "taint" {
    for_each = local.node_taints[each.key]
    content {
      key    = taint.value.key
      value  = taint.value.value
      effect = lookup(local.eks_taint_effects, taint.value.effect)
    }
  }

  scaling_config {
    min_size     = each.value.min_nodes
    max_size     = max(each.value.max_nodes, 1) # EKS wants max_size >= 1; min 0 scales from zero
    desired_size = each.value.min_nodes
  }

  launch_template {
    id      = aws_launch_template.gpu[each.key].id
    version = aws_launch_template.gpu[each.key].latest_version
  }

  update_config {
    max_unavailable = 1
  }

  tags = merge(local.tags, { "magistral.ai/pool" = each.key })

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size] # the cluster autoscaler owns it
  }

  depends_on = [aws_iam_role_policy_attachment.node, aws_eks_addon.before_compute]
}
