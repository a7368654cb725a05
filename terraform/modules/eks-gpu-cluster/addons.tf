# Cluster software: the NVIDIA device plugin, the cluster autoscaler and the KubeRay operator.
# Pods that need AWS credentials get them from EKS Pod Identity (no IMDS from pods).

data "aws_iam_policy_document" "pod_identity_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]
    principals {
      type        = "Service"
      identifiers = ["pods.eks.amazonaws.com"]
    }
  }
}

# --- NVIDIA device plugin ---------------------------------------------------------------------

# Advertises nvidia.com/gpu on the nodes labelled nvidia.com/gpu.present=true (every GPU pool
# node group), tolerating the pools' NoSchedule taints.
resource "helm_release" "nvidia_device_plugin" {
  name             = "nvidia-device-plugin"
  repository       = "https://nvidia.github.io/k8s-device-plugin"
  chart            = "nvidia-device-plugin"
  version          = var.nvidia_device_plugin_chart_version
  namespace        = "nvidia-device-plugin"
  create_namespace = true

  values = [yamlencode({
    tolerations = [
      { operator = "Exists", effect = "NoSchedule" },
      { key = "CriticalAddonsOnly", operator = "Exists" },
    ]
  })]

  depends_on = [aws_eks_node_group.system, aws_eks_addon.coredns]
}

# --- Cluster autoscaler -----------------------------------------------------------------------

# Adds nodes to a pool's node group (up to max_nodes) when the KubeRay autoscaler creates Ray
# worker pods that do not fit, and removes empty nodes. Finds the node groups by the tags EKS
# puts on their Auto Scaling groups.
data "aws_iam_policy_document" "cluster_autoscaler" {
  statement {
    sid = "Describe"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations",
      "autoscaling:DescribeScalingActivities",
      "autoscaling:DescribeTags",
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:GetInstanceTypesFromInstanceRequirements",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "DescribeNodegroups"
    actions   = ["eks:DescribeNodegroup"]
    resources = ["arn:${local.partition}:eks:${local.region}:${local.account_id}:nodegroup/${var.cluster_name}/*"]
  }

  statement {
    sid = "ScaleOwnGroups"
    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:TerminateInstanceInAutoScalingGroup",
    ]
    resources = ["arn:${local.partition}:autoscaling:${local.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/eks-*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${var.cluster_name}"
      values   = ["owned"]
    }
  }
}

resource "aws_iam_role" "cluster_autoscaler" {
  count              = var.enable_cluster_autoscaler ? 1 : 0
  name_prefix        = "${var.cluster_name}-ca-"
  assume_role_policy = data.aws_iam_policy_document.pod_identity_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "cluster_autoscaler" {
  count  = var.enable_cluster_autoscaler ? 1 : 0
  name   = "cluster-autoscaler"
  role   = aws_iam_role.cluster_autoscaler[0].id
  policy = data.aws_iam_policy_document.cluster_autoscaler.json
}

resource "aws_eks_pod_identity_association" "cluster_autoscaler" {
  count           = var.enable_cluster_autoscaler ? 1 : 0
  cluster_name    = aws_eks_cluster.this.name
  namespace       = "kube-system"
  service_account = "cluster-autoscaler"
  role_arn        = aws_iam_role.cluster_autoscaler[0].arn
  tags            = local.tags
}

resource "helm_release" "cluster_autoscaler" {
  count      = var.enable_cluster_autoscaler ? 1 : 0
  name       = "cluster-autoscaler"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = var.cluster_autoscaler_chart_version
  namespace  = "kube-system"

  values = [yamlencode({
    cloudProvider = "aws"
    image         = { tag = "v${var.kubernetes_version}.0" } # the autoscaler minor follows Kubernetes'
    awsRegion     = local.region
    autoDiscovery = { clusterName = aws_eks_cluster.this.name }
    rbac          = { serviceAccount = { create = true, name = "cluster-autoscaler" } }
    nodeSelector  = local.system_labels
    extraArgs = {
      "balance-similar-node-groups"   = true
      "skip-nodes-with-local-storage" = false # Ray pods use emptyDir /dev/shm
      "expander"                      = "least-waste"
      "scale-down-unneeded-time"      = "10m"
    }
  })]

  depends_on = [aws_eks_pod_identity_association.cluster_autoscaler, aws_eks_addon.coredns]
}

# --- KubeRay operator -------------------------------------------------------------------------

resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_chart_version
  namespace        = "kuberay-system"
  create_namespace = true
  wait             = true

  values = [yamlencode({ nodeSelector = local.system_labels })]

  depends_on = [aws_eks_node_group.system, aws_eks_addon.coredns]
}
