# Nebula on a Nomad cluster: etcd (or an external one), the control plane and one node agent per
# GPU client. Run it with `nomad job run nomad/nebula.nomad` (see nomad/README.md for what the
# cluster needs and for overriding the variables below with -var or a .vars.hcl file).

variable "datacenters" {
  type        = list(string)
  default     = ["*"]
  description = "Datacenters the job may run in."
}

variable "scheduler_image" {
  type    = string
  default = "nebula-scheduler:0.1.0"
}

variable "router_image" {
  type    = string
  default = "nebula-router:0.1.0"
}

variable "gateway_image" {
  type    = string
  default = "nebula-gateway:0.1.0"
}

variable "node_image" {
  type        = string
  default     = "nebula-node:0.1.0-gpu"
  description = "The node agent image built from the `gpu` target (vLLM inside)."
}

variable "etcd_image" {
  type    = string
  default = "quay.io/coreos/etcd:v3.5.17"
}

variable "etcd_endpoints" {
  type        = string
  default     = ""
  description = "Comma-separated host:port list of an external etcd. Empty runs the bundled single-member etcd group."
}

variable "model" {
  type        = string
  default     = "Qwen/Qwen2.5-0.5B-Instruct"
  description = "The model the scheduler places (its Hugging Face name)."
}

variable "model_uid" {
  type    = string
  default = "qwen2_5_0_5b"
}

variable "engine" {
  type    = string
  default = "vllm"
}

variable "replicas" {
  type    = number
  default = 1
}

variable "node_count" {
  type        = number
  default     = 1
  description = "How many GPU clients run a node agent (one per client)."
}

variable "gpus_per_node" {
  type    = number
  default = 1
}

variable "gpu_min_memory" {
  type        = string
  default     = "8 GiB"
  description = "Smallest GPU memory a node agent's client must have."
}

variable "router_count" {
  type    = number
  default = 2
}

variable "gateway_count" {
  type    = number
  default = 1
}

variable "workers" {
  type        = number
  default     = 2
  description = "Processes per router and per gateway task (--workers, one SO_REUSEPORT port); each gets 1000 MHz of cpu and 256 MB."
}

variable "hf_cache_dir" {
  type        = string
  default     = "/opt/nebula/hf-cache"
  description = "Host directory for the Hugging Face cache on GPU clients (kept across restarts)."
}

variable "allow_anonymous" {
  description = "Serve callers without an API key (with the anonymous limits). Off: the gateway needs keys (api_keys in the Nomad Variable nomad/jobs/nebula) and refuses to start without them."
  type        = bool
  default     = false
}

variable "log_level" {
  type    = string
  default = "info"
}

job "nebula" {
  datacenters = var.datacenters
  type        = "service"

  # Rolling updates that wait for /healthz and roll back on their own when a version never gets
  # healthy.
  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "5m"
    progress_deadline = "10m"
    auto_revert       = true
  }

  # ---- etcd: the only shared state (skipped when etcd_endpoints names an external one) ----------
  group "etcd" {
    count = var.etcd_endpoints == "" ? 1 : 0

    network {
      port "client" {
        static = 2379
      }
      port "peer" {
        static = 2380
      }
      # /health and /metrics only, in plain HTTP: the client port requires a client certificate.
      port "metrics" {
        static = 2381
      }
    }

    # Keep the data directory across restarts and updates of the allocation.
    ephemeral_disk {
      sticky  = true
      migrate = true
      size    = 1024
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    service {
      name     = "nebula-etcd"
      provider = "nomad"
      port     = "client"

      check {
        name     = "etcd-health"
        type     = "http"
        port     = "metrics"
        path     = "/health"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "etcd" {
      driver = "docker"

      config {
        image = var.etcd_image
        ports = ["client", "peer", "metrics"]
        command = "/usr/local/bin/etcd"
        # Clients over TLS with a certificate signed by the job's CA; every role then logs in
        # as its own user (auth is enabled by the scheduler group's etcd-auth task).
        args = [
          "--name=nebula-etcd",
          "--data-dir=/alloc/data/etcd",
          "--listen-client-urls=https://0.0.0.0:2379",
          "--advertise-client-urls=https://${NOMAD_IP_client}:2379",
          "--cert-file=/secrets/etcd-server.pem",
          "--key-file=/secrets/etcd-server-key.pem",
          "--trusted-ca-file=/secrets/etcd-ca.pem",
          "--client-cert-auth=true",
          "--listen-metrics-urls=http://0.0.0.0:2381",
          "--listen-peer-urls=http://0.0.0.0:2380",
          "--initial-advertise-peer-urls=http://${NOMAD_IP_peer}:2380",
          "--initial-cluster=nebula-etcd=http://${NOMAD_IP_peer}:2380",
          "--auto-compaction-retention=1h",
        ]
      }

      template {
        destination = "secrets/etcd-ca.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_ca }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-server.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_server_cert }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-server-key.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_server_key }}{{ end }}
        EOT
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }

  # ---- scheduler: records the model and keeps every placement plan true -------------------------
  group "scheduler" {
    count = 1

    network {
      port "http" {
        static = 10815
      }
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    service {
      name     = "nebula-scheduler"
      provider = "nomad"
      port     = "http"

      check {
        name     = "healthz"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "3s"
      }
    }

    # Before the scheduler starts: etcd auth on, one least-privilege user per role, with the
    # passwords of the Nomad Variable (idempotent: it runs before every start).
    task "etcd-auth" {
      driver = "docker"

      lifecycle {
        hook    = "prestart"
        sidecar = false
      }

      config {
        image      = var.scheduler_image
        entrypoint = ["nebula-etcd-auth"]
        args       = ["--credentials-dir", "/secrets/etcd-users"]
      }

      template {
        destination = "local/etcd.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        NEBULA_ETCD_ENDPOINTS={{ with "${var.etcd_endpoints}" }}{{ . }}{{ else }}{{ range $i, $s := nomadService "nebula-etcd" }}{{ if $i }},{{ end }}{{ $s.Address }}:{{ $s.Port }}{{ end }}{{ end }}
        EOT
      }

      template {
        destination = "secrets/etcd.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        NEBULA_ETCD_CA_CERT=/secrets/etcd-ca.pem
        NEBULA_ETCD_CERT=/secrets/etcd-client.pem
        NEBULA_ETCD_KEY=/secrets/etcd-client-key.pem
        EOT
      }
      template {
        destination = "secrets/etcd-ca.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_ca }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-client.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_client_cert }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-client-key.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_client_key }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-users/root"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_root_password }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-users/nebula-router"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_password_router }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-users/nebula-node"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_password_node }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-users/nebula-scheduler"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_password_scheduler }}{{ end }}
        EOT
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }

    task "scheduler" {
      driver = "docker"

      config {
        image = var.scheduler_image
        ports = ["http"]
      }

      env {
        NEBULA_LISTEN     = "0.0.0.0:10815"
        NEBULA_MODEL_UID  = var.model_uid
        NEBULA_MODEL_NAME = var.model
        NEBULA_ENGINE     = var.engine
        NEBULA_REPLICAS   = var.replicas
        NEBULA_PORT       = "10814"
        NEBULA_LOG_LEVEL  = var.log_level
      }

      # etcd endpoints: the external list, or every registered instance of the bundled etcd.
      # A change re-renders the file and restarts the task with the new list.
      template {
        destination = "local/etcd.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        NEBULA_ETCD_ENDPOINTS={{ with "${var.etcd_endpoints}" }}{{ . }}{{ else }}{{ range $i, $s := nomadService "nebula-etcd" }}{{ if $i }},{{ end }}{{ $s.Address }}:{{ $s.Port }}{{ end }}{{ end }}
        EOT
      }

      # etcd over TLS as this role's own user (docs/security.md); the secrets come from the
      # Nomad Variable nomad/jobs/nebula (nomad/README.md says how to create it).
      template {
        destination = "secrets/etcd.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        NEBULA_ETCD_USERNAME=nebula-scheduler
        NEBULA_ETCD_PASSWORD_FILE=/secrets/etcd-password
        NEBULA_ETCD_CA_CERT=/secrets/etcd-ca.pem
        NEBULA_ETCD_CERT=/secrets/etcd-client.pem
        NEBULA_ETCD_KEY=/secrets/etcd-client-key.pem
        EOT
      }
      template {
        destination = "secrets/etcd-password"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_password_scheduler }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-ca.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_ca }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-client.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_client_cert }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-client-key.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_client_key }}{{ end }}
        EOT
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }

  # ---- router: picks a ready replica per request ---------------------------------------------
  group "router" {
    count = var.router_count

    # Static ports: one router per client.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      port "http" {
        static = 18081
      }
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    service {
      name     = "nebula-router"
      provider = "nomad"
      port     = "http"

      check {
        name     = "healthz"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "router" {
      driver = "docker"

      config {
        image = var.router_image
        ports = ["http"]
      }

      env {
        NEBULA_LISTEN    = "0.0.0.0:18081"
        NEBULA_LOG_LEVEL = var.log_level
        NEBULA_WORKERS   = var.workers
      }

      template {
        destination = "local/etcd.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        NEBULA_ETCD_ENDPOINTS={{ with "${var.etcd_endpoints}" }}{{ . }}{{ else }}{{ range $i, $s := nomadService "nebula-etcd" }}{{ if $i }},{{ end }}{{ $s.Address }}:{{ $s.Port }}{{ end }}{{ end }}
        EOT
      }

      # etcd over TLS as this role's own user (docs/security.md); the secrets come from the
      # Nomad Variable nomad/jobs/nebula (nomad/README.md says how to create it).
      template {
        destination = "secrets/etcd.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        NEBULA_ETCD_USERNAME=nebula-router
        NEBULA_ETCD_PASSWORD_FILE=/secrets/etcd-password
        NEBULA_ETCD_CA_CERT=/secrets/etcd-ca.pem
        NEBULA_ETCD_CERT=/secrets/etcd-client.pem
        NEBULA_ETCD_KEY=/secrets/etcd-client-key.pem
        EOT
      }
      template {
        destination = "secrets/etcd-password"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_password_router }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-ca.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_ca }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-client.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_client_cert }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-client-key.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_client_key }}{{ end }}
        EOT
      }

      resources {
        cpu    = 1000 * var.workers
        memory = 256 + 256 * var.workers
      }
    }
  }

  # ---- gateway: the public OpenAI-compatible API -----------------------------------------------
  group "gateway" {
    count = var.gateway_count

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      port "http" {
        static = 8081
      }
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    service {
      name     = "nebula-gateway"
      provider = "nomad"
      port     = "http"

      check {
        name     = "healthz"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "gateway" {
      driver = "docker"

      config {
        image = var.gateway_image
        ports = ["http"]
      }

      env {
        NEBULA_LISTEN          = "0.0.0.0:8081"
        NEBULA_LOG_LEVEL       = var.log_level
        NEBULA_WORKERS         = var.workers
        NEBULA_ALLOW_ANONYMOUS = var.allow_anonymous ? "1" : "0"
        NEBULA_API_KEYS_FILE   = "/secrets/api-keys"
      }

      # API keys, one per line (see nebula-gateway --help), from the Nomad Variable; never in
      # the environment.
      template {
        destination = "secrets/api-keys"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ if nomadVarExists "nomad/jobs/nebula" }}{{ with nomadVar "nomad/jobs/nebula" }}{{ with .api_keys }}{{ . }}{{ end }}{{ end }}{{ end }}
        EOT
      }

      # The gateway fails over between every healthy router; it never talks to etcd.
      template {
        destination = "local/endpoints.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        NEBULA_ROUTER_URL={{ range $i, $s := nomadService "nebula-router" }}{{ if $i }},{{ end }}http://{{ $s.Address }}:{{ $s.Port }}{{ end }}
        EOT
      }

      resources {
        cpu    = 1000 * var.workers
        memory = 256 + 256 * var.workers
      }
    }
  }

  # ---- node agents: one per GPU client, spawning vLLM replicas ----------------------------------
  group "node" {
    count = var.node_count

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      # The agent's /healthz and /metrics.
      port "http" {
        static = 10816
      }
      # The first engine replica; further replicas on this client take the next free ports.
      port "engine" {
        static = 10814
      }
    }

    # A model download can take minutes before the first replica is ready.
    update {
      max_parallel     = 1
      health_check     = "checks"
      min_healthy_time  = "10s"
      healthy_deadline  = "20m"
      progress_deadline = "30m"
      auto_revert       = true
    }

    restart {
      attempts = 5
      interval = "10m"
      delay    = "15s"
      mode     = "delay"
    }

    service {
      name     = "nebula-node"
      provider = "nomad"
      port     = "http"

      check {
        name     = "healthz"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "node" {
      driver = "docker"

      # The agent signals every engine process group on SIGTERM; give vLLM time to exit.
      kill_signal  = "SIGTERM"
      kill_timeout = "60s"

      config {
        image = var.node_image
        # Host networking: engines bind the client's ports directly, so extra replicas can take
        # the next free port and the router reaches them at the advertised address.
        network_mode = "host"
        # vLLM workers share tensors through /dev/shm (bytes).
        shm_size = 8589934592
        mount {
          type   = "bind"
          source = var.hf_cache_dir
          target = "/data/huggingface"
        }
      }

      env {
        NEBULA_LISTEN         = "0.0.0.0:10816"
        NEBULA_NODE_ID        = "${node.unique.name}"
        NEBULA_ADVERTISE_HOST = "${attr.unique.network.ip-address}"
        NEBULA_STATE_DIR      = "/alloc/data/nebula"
        NEBULA_LOG_LEVEL      = var.log_level
        HF_HOME               = "/data/huggingface"
      }

      template {
        destination = "local/etcd.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        NEBULA_ETCD_ENDPOINTS={{ with "${var.etcd_endpoints}" }}{{ . }}{{ else }}{{ range $i, $s := nomadService "nebula-etcd" }}{{ if $i }},{{ end }}{{ $s.Address }}:{{ $s.Port }}{{ end }}{{ end }}
        EOT
      }

      # etcd over TLS as this role's own user (docs/security.md); the secrets come from the
      # Nomad Variable nomad/jobs/nebula (nomad/README.md says how to create it).
      template {
        destination = "secrets/etcd.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        NEBULA_ETCD_USERNAME=nebula-node
        NEBULA_ETCD_PASSWORD_FILE=/secrets/etcd-password
        NEBULA_ETCD_CA_CERT=/secrets/etcd-ca.pem
        NEBULA_ETCD_CERT=/secrets/etcd-client.pem
        NEBULA_ETCD_KEY=/secrets/etcd-client-key.pem
        EOT
      }
      template {
        destination = "secrets/etcd-password"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_password_node }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-ca.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_ca }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-client.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_client_cert }}{{ end }}
        EOT
      }
      template {
        destination = "secrets/etcd-client-key.pem"
        change_mode = "restart"
        perms       = "0600"
        data        = <<-EOT
        {{ with nomadVar "nomad/jobs/nebula" }}{{ .etcd_client_key }}{{ end }}
        EOT
      }

      # Optional Hugging Face token for gated models, from Nomad Variables at
      # nomad/jobs/nebula (key hf_token); absent, the file is empty.
      template {
        destination = "secrets/hf.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        {{ if nomadVarExists "nomad/jobs/nebula" }}{{ with nomadVar "nomad/jobs/nebula" }}{{ with .hf_token }}HF_TOKEN={{ . }}{{ end }}{{ end }}{{ end }}
        EOT
      }

      resources {
        cpu    = 4000
        memory = 16384

        # Places the group only on clients whose NVIDIA device plugin fingerprinted GPUs.
        device "nvidia/gpu" {
          count = var.gpus_per_node

          constraint {
            attribute = "${device.attr.memory}"
            operator  = ">="
            value     = var.gpu_min_memory
          }
        }
      }
    }
  }
}
