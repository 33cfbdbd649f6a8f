{{/*
The chart's name, truncated to the 63 characters of a label value.
*/}}
{{- define "clustral-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object: the release name when it contains the chart's
name, else <release>-<chart>.
*/}}
{{- define "clustral-agent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "clustral-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clustral-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "clustral-agent.labels" -}}
{{ include "clustral-agent.selectorLabels" . }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: clustral
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | toString | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The Secret holding the join token, and its key.
*/}}
{{- define "clustral-agent.tokenSecret" -}}
{{- .Values.joinToken.existingSecret | default (printf "%s-join-token" (include "clustral-agent.fullname" .)) }}
{{- end }}

{{- define "clustral-agent.tokenKey" -}}
{{- if .Values.joinToken.existingSecret }}{{ .Values.joinToken.existingSecretKey | default "token" }}{{ else }}token{{ end }}
{{- end }}

{{- define "clustral-agent.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
validate fails the rendering, naming the value to fix, when the values
cannot make a working and locked-down agent.
*/}}
{{- define "clustral-agent.validate" -}}
{{- $t := .Values.joinToken }}
{{- if and $t.existingSecret $t.value }}
{{- fail "joinToken: set either joinToken.existingSecret (a Secret you created) or joinToken.value (the chart creates the Secret), not both" }}
{{- end }}
{{- if not (or $t.existingSecret $t.value) }}
{{- fail "joinToken: the agent needs the cluster's join token: --set-file joinToken.value=join-token (printed by `clustral clusters add <name>`), or --set joinToken.existingSecret=<name of a Secret with key token>" }}
{{- end }}
{{- if and $t.value (not (hasPrefix "cjt_" (trim $t.value))) }}
{{- fail "joinToken.value is not a join token (they start with cjt_): use the token printed by `clustral clusters add <name>`" }}
{{- end }}
{{- $url := .Values.coordinator.url | default "" }}
{{- if not $url }}
{{- fail "coordinator.url is required: --set coordinator.url=https://clustral.example.com (the coordinator's public URL)" }}
{{- end }}
{{- if not (regexMatch "^https://[^/?#\\s]+(/[^?#\\s]*)?$" $url) }}
{{- fail (printf "coordinator.url %q is not an https:// URL: set it to the coordinator's public URL, e.g. https://clustral.example.com" $url) }}
{{- end }}
{{- with .Values.image.tag }}
{{- if not (kindIs "string" .) }}
{{- fail (printf "image.tag %v is a number, and YAML may have changed it (1.10 reads as 1.1): quote it in the values file, or use --set-string image.tag=..." .) }}
{{- end }}
{{- end }}
{{- if not (has .Values.logFormat (list "json" "text")) }}
{{- fail (printf "logFormat %q: use json or text" (toString .Values.logFormat)) }}
{{- end }}
{{- if and .Values.logLevel (not (has .Values.logLevel (list "debug" "info" "warn" "error"))) }}
{{- fail (printf "logLevel %q: use debug, info, warn or error" (toString .Values.logLevel)) }}
{{- end }}
{{- $port := int .Values.healthPort }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- fail (printf "healthPort %v: use a port between 1 and 65535" .Values.healthPort) }}
{{- end }}
{{- if lt (int .Values.drainTimeoutSeconds) 1 }}
{{- fail (printf "drainTimeoutSeconds %v: use a whole number of seconds, at least 1" .Values.drainTimeoutSeconds) }}
{{- end }}
{{- $token := "set joinToken.value or joinToken.existingSecret (a token in the args is readable by anyone who may read the DaemonSet)" }}
{{- $managed := dict "coordinator" "set coordinator.url" "join-token-file" $token "join-token" $token "ca-file" "set coordinator.caCert" "health-listen" "set healthPort" "drain-timeout" "set drainTimeoutSeconds" "log-format" "set logFormat" "log-level" "set logLevel" "audit-dir" "the spool lives on the pod's state volume (auditSpool.sizeLimit)" "kubeconfig" "the agent uses its service account" "insecure" "the agent reaches the coordinator over https only" "live" "set liveView.enabled" "live-user" "set liveView.user" }}
{{- range .Values.extraArgs }}
{{- $a := toString . }}
{{- if not (hasPrefix "--" $a) }}
{{- fail (printf "extraArgs: %q is not a flag of `clustral agent` (--name=value)" $a) }}
{{- end }}
{{- $flag := index (splitList "=" (trimPrefix "--" $a)) 0 }}
{{- if hasKey $managed $flag }}
{{- fail (printf "extraArgs: %s is refused: %s" $a (get $managed $flag)) }}
{{- end }}
{{- end }}
{{- end }}
