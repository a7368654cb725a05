# The Magistral service: a RayService (KubeRay) whose serveConfigV2 is the production serve
# config, its secrets and config files, and the weights fetched onto each node's NVMe.

locals {
  models_mount = dirname(var.model_dir) # /models: the hostPath is mounted here
  config_dir   = "/etc/magistral"       # tenants.yaml and prices.yaml (the serve config's paths)

  # Worker pod size per instance type: most of the node (one Ray worker pod per node, holding
  # all its GPUs), leaving room for the kubelet, the device plugin and the add-on DaemonSets.
  pod_sizes = {
    "g6e.xlarge"    = { cpu = "3", memory = "24Gi" }
    "g6e.2xlarge"   = { cpu = "7", memory = "56Gi" }
    "g6e.12xlarge"  = { cpu = "44", memory = "340Gi" }
    "g6e.24xlarge"  = { cpu = "90", memory = "700Gi" }
    "g6e.48xlarge"  = { cpu = "180", memory = "1400Gi" }
    "g6.12xlarge"   = { cpu = "44", memory = "170Gi" }
    "p5.4xlarge"    = { cpu = "14", memory = "220Gi" }
    "p5.48xlarge"   = { cpu = "180", memory = "1850Gi" }
    "p5e.48xlarge"  = { cpu = "180", memory = "1850Gi" }
    "p5en.48xlarge" = { cpu = "180", memory = "1850Gi" }
  }
  default_pod_size = { cpu = "8", memory = "32Gi" }

  worker_pools = merge(local.cloud_pools, var.include_byo_worker_groups ? local.byo_pools : {})

  sync_image = {
    hf = coalesce(var.model_sync_images.hf, var.ray_image)
    s3 = var.model_sync_images.s3
  }

  volumes = [
    { name = "models", hostPath = { path = var.models_host_path, type = "DirectoryOrCreate" } },
    { name = "model-sync", configMap = { name = kubernetes_config_map_v1.model_sync.metadata[0].name, defaultMode = 365 } },
    {
      name = "magistral-config"
      projected = {
        sources = [
          { secret = { name = kubernetes_secret_v1.tenants.metadata[0].name } },
          { configMap = { name = kubernetes_config_map_v1.prices.metadata[0].name } },
        ]
      }
    },
    { name = "dshm", emptyDir = { medium = "Memory", sizeLimit = "16Gi" } },
  ]

  ray_volume_mounts = [
    { name = "models", mountPath = local.models_mount, readOnly = true }, # written by model-sync only
    { name = "magistral-config", mountPath = local.config_dir, readOnly = true },
    { name = "dshm", mountPath = "/dev/shm" },
  ]

  ray_env = [
    { name = "LEDGER_URL", valueFrom = { secretKeyRef = { name = kubernetes_secret_v1.ledger.metadata[0].name, key = "url" } } },
  ]

  # The init container that puts the model files on the node (once per node; see the script).
  model_sync_container = {
    for files in ["all", "tokenizer"] : files => {
      name    = "model-sync"
      image   = local.sync_image[var.model_source]
      command = ["/bin/sh", "/opt/model-sync/sync-model.sh"]
      env = [
        { name = "MODEL_SOURCE", value = var.model_source },
        { name = "MODEL_FILES", value = files },
        { name = "MODEL_DIR", value = var.model_dir },
        { name = "MODEL_REPO_ID", value = var.model_repo_id },
        { name = "MODEL_S3_URI", value = var.model_s3_uri },
        { name = "AWS_REGION", value = local.region },
        { name = "HF_TOKEN", valueFrom = { secretKeyRef = { name = kubernetes_secret_v1.hf_token.metadata[0].name, key = "HF_TOKEN" } } },
      ]
      volumeMounts = [
        { name = "models", mountPath = local.models_mount },
        { name = "model-sync", mountPath = "/opt/model-sync", readOnly = true },
      ]
      resources = { requests = { cpu = "1", memory = "2Gi" }, limits = { memory = "8Gi" } }
      # Root: the hostPath directory is root-owned and Ray images run as an unprivileged user.
      # The files it writes are world-readable.
      securityContext = { runAsUser = 0 }
    }
  }

  head_group = {
    rayStartParams = { "dashboard-host" = "0.0.0.0", "num-gpus" = "0" }
    template = {
      spec = {
        serviceAccountName = kubernetes_service_account_v1.ray.metadata[0].name
        # Only the head gets an API token: KubeRay binds its autoscaler Role to this service
        # account, and the autoscaler sidecar in this pod scales the worker groups.
        automountServiceAccountToken = true
        nodeSelector                 = local.system_labels
        initContainers               = [local.model_sync_container["tokenizer"]]
        containers = [{
          name  = "ray-head"
          image = var.ray_image
          ports = [
            { name = "gcs-server", containerPort = 6379 },
            { name = "dashboard", containerPort = 8265 },
            { name = "client", containerPort = 10001 },
            { name = "serve", containerPort = 8000 },
          ]
          env          = local.ray_env
          volumeMounts = local.ray_volume_mounts
          resources = {
            requests = var.head_resources
            limits   = { memory = var.head_resources.memory }
          }
        }]
        volumes = local.volumes
      }
    }
  }

  # One Ray worker group per pool: one pod per node holding every GPU of the node, on that
  # pool's nodes (nodeSelector = its node labels, tolerating its taints), advertising the
  # pool's Ray resources (e.g. accelerator_type:H100, or rtx4090 once per GPU) and labels.
  worker_groups = [
    for name, pool in local.worker_pools : {
      groupName   = name
      replicas    = pool.min_nodes
      minReplicas = pool.min_nodes
      maxReplicas = pool.max_nodes
      rayStartParams = merge(
        {
          "num-gpus"  = tostring(pool.gpus_per_node)
          "resources" = jsonencode(jsonencode({ for key in setsubtract(keys(lookup(var.ray_resources, name, {})), ["GPU"]) : key => var.ray_resources[name][key] }))
        },
        # ray start --labels k=v,...; compact() drops it when the pool has no Ray labels.
        { for labels in compact([join(",", [for k, v in lookup(var.ray_labels, name, {}) : "${k}=${v}"])]) : "labels" => labels },
      )
      template = {
        spec = {
          serviceAccountName = kubernetes_service_account_v1.ray.metadata[0].name
          nodeSelector       = local.node_labels[name]
          tolerations = [
            for taint in local.node_taints[name] : {
              key      = taint.key
              operator = "Equal"
              value    = taint.value
              effect   = lookup(local.k8s_taint_effects, taint.effect)
            }
          ]
          initContainers = [local.model_sync_container["all"]]
          containers = [{
            name         = "ray-worker"
            image        = var.ray_image
            env          = local.ray_env
            volumeMounts = local.ray_volume_mounts
            resources = {
              requests = {
                cpu              = lookup(var.worker_pod_resources, name, lookup(local.pod_sizes, coalesce(pool.instance_type, "byo"), local.default_pod_size)).cpu
                memory           = lookup(var.worker_pod_resources, name, lookup(local.pod_sizes, coalesce(pool.instance_type, "byo"), local.default_pod_size)).memory
                "nvidia.com/gpu" = tostring(pool.gpus_per_node)
              }
              limits = {
                memory           = lookup(var.worker_pod_resources, name, lookup(local.pod_sizes, coalesce(pool.instance_type, "byo"), local.default_pod_size)).memory
                "nvidia.com/gpu" = tostring(pool.gpus_per_node)
              }
            }
          }]
          volumes = local.volumes
        }
      }
    }
  ]

  rayservice = {
    apiVersion = "ray.io/v1"
    kind       = "RayService"
    metadata = {
      name      = var.rayservice_name
      namespace = kubernetes_namespace_v1.magistral.metadata[0].name
    }
    spec = {
      serveConfigV2 = var.serve_config
      rayClusterConfig = {
        rayVersion              = var.ray_version
        enableInTreeAutoscaling = true
        autoscalerOptions       = { upscalingMode = "Default", idleTimeoutSeconds = 600 }
        headGroupSpec           = local.head_group
        workerGroupSpecs        = local.worker_groups
      }
    }
  }
}

resource "kubernetes_namespace_v1" "magistral" {
  metadata {
    name = var.namespace
  }

  depends_on = [aws_eks_node_group.system]
}

resource "kubernetes_service_account_v1" "ray" {
  metadata {
    name      = "ray-magistral"
    namespace = kubernetes_namespace_v1.magistral.metadata[0].name
  }
  automount_service_account_token = false
}

resource "kubernetes_secret_v1" "ledger" {
  metadata {
    name      = "magistral-ledger"
    namespace = kubernetes_namespace_v1.magistral.metadata[0].name
  }
  data = { url = var.ledger_url } # the same key as in cluster/rayservice.yaml
}

resource "kubernetes_secret_v1" "hf_token" {
  metadata {
    name      = "magistral-hf-token"
    namespace = kubernetes_namespace_v1.magistral.metadata[0].name
  }
  data = { HF_TOKEN = var.hf_token }
}

# API keys (or their digests) live in tenants.yaml: a Secret. Both files are mounted as a
# projected volume (no subPath), so edits reach the running replicas without a restart.
resource "kubernetes_secret_v1" "tenants" {
  metadata {
    name      = "magistral-tenants"
    namespace = kubernetes_namespace_v1.magistral.metadata[0].name
  }
  data = { "tenants.yaml" = var.tenants_yaml }
}

resource "kubernetes_config_map_v1" "prices" {
  metadata {
    name      = "magistral-prices"
    namespace = kubernetes_namespace_v1.magistral.metadata[0].name
  }
  data = { "prices.yaml" = var.prices_yaml }
}

resource "kubernetes_config_map_v1" "model_sync" {
  metadata {
    name      = "magistral-model-sync"
    namespace = kubernetes_namespace_v1.magistral.metadata[0].name
  }
  data = { "sync-model.sh" = file("${path.module}/templates/sync-model.sh") }
}

# S3 mirror: the Ray pods read the model prefix through Pod Identity.
data "aws_iam_policy_document" "model_read" {
  statement {
    sid       = "ListModelPrefix"
    actions   = ["s3:ListBucket"]
    resources = ["arn:${local.partition}:s3:::${local.model_bucket}"]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [local.model_prefix, "${local.model_prefix}/*"]
    }
  }
  statement {
    sid       = "ReadModelObjects"
    actions   = ["s3:GetObject"]
    resources = ["arn:${local.partition}:s3:::${local.model_bucket}/${local.model_prefix}/*"]
  }
}

locals {
  model_s3_path = trimprefix(var.model_s3_uri, "s3://")
  model_bucket  = element(split("/", local.model_s3_path), 0)
  model_prefix  = trim(join("/", slice(split("/", local.model_s3_path), 1, length(split("/", local.model_s3_path)))), "/")
  use_s3        = contains(["s3"], var.model_source)
}

resource "aws_iam_role" "model_read" {
  count              = local.use_s3 ? 1 : 0
  name_prefix        = "${var.cluster_name}-model-"
  assume_role_policy = data.aws_iam_policy_document.pod_identity_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "model_read" {
  count  = local.use_s3 ? 1 : 0
  name   = "model-read"
  role   = aws_iam_role.model_read[0].id
  policy = data.aws_iam_policy_document.model_read.json
}

resource "aws_eks_pod_identity_association" "model_read" {
  count           = local.use_s3 ? 1 : 0
  cluster_name    = aws_eks_cluster.this.name
  namespace       = kubernetes_namespace_v1.magistral.metadata[0].name
  service_account = kubernetes_service_account_v1.ray.metadata[0].name
  role_arn        = aws_iam_role.model_read[0].arn
  tags            = local.tags
}

resource "kubectl_manifest" "rayservice" {
  yaml_body         = yamlencode(local.rayservice)
  server_side_apply = true
  wait              = false

  lifecycle {
    precondition {
      condition     = local.use_s3 ? can(regex("^s3://[^/]+/.+", var.model_s3_uri)) : true
      error_message = "model_source = \"s3\" needs model_s3_uri = s3://bucket/prefix."
    }
  }

  depends_on = [
    helm_release.kuberay_operator,
    helm_release.nvidia_device_plugin,
    aws_eks_node_group.gpu,
    aws_eks_pod_identity_association.model_read,
  ]
}
