{{- define "memstage.fullname" -}}
{{- printf "%s-memstage" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "memstage.labels" -}}
app.kubernetes.io/name: memstage
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The Secrets the pods mount: given (existingSecret) or the chart's own. */}}
{{- define "memstage.clusterSecretName" -}}
{{- .Values.clusterSecret.existingSecret | default (printf "%s-cluster" (include "memstage.fullname" .)) -}}
{{- end -}}

{{- define "memstage.tlsSecretName" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls" (include "memstage.fullname" .)) -}}
{{- end -}}

{{- define "memstage.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* A Kubernetes quantity with a binary suffix (Mi, Gi, Ti) in MiB, for arithmetic. */}}
{{- define "memstage.mebibytes" -}}
{{- $q := toString . -}}
{{- $n := regexFind "^[0-9]+" $q | int -}}
{{- $unit := trimPrefix (regexFind "^[0-9]+" $q) $q -}}
{{- if eq $unit "Mi" -}}{{ $n }}{{- else if eq $unit "Gi" -}}{{ mul $n 1024 }}{{- else if eq $unit "Ti" -}}{{ mul $n 1048576 }}
{{- else -}}{{ fail (printf "%q: use a whole number of Mi, Gi or Ti" $q) }}{{- end -}}
{{- end -}}

{{/* MEMSTAGE_<KEY> variables, one per settings key. */}}
{{- define "memstage.settingsEnv" -}}
{{- range $key, $value := . }}
- name: MEMSTAGE_{{ upper $key }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end -}}

{{/* How the Prometheus Operator scrapes /metrics: HTTPS with the scrapers' certificate (the
argument: the chart's root context). */}}
{{- define "memstage.scrapeTls" -}}
{{- $full := include "memstage.fullname" . -}}
{{- $secret := printf "%s-client-tls" $full -}}
{{- $cert := "metrics.crt" -}}
{{- $key := "metrics.key" -}}
{{- if .Values.tls.existingClientSecret -}}
{{- $secret = .Values.tls.existingClientSecret -}}
{{- else if .Values.tls.certManager.enabled -}}
{{- $secret = printf "%s-metrics-tls" $full -}}
{{- $cert = "tls.crt" -}}
{{- $key = "tls.key" -}}
{{- end -}}
scheme: https
tlsConfig:
  serverName: memstage
  ca:
    secret:
      name: {{ $secret }}
      key: ca.crt
  cert:
    secret:
      name: {{ $secret }}
      key: {{ $cert }}
  keySecret:
    name: {{ $secret }}
    key: {{ $key }}
{{- end }}

{{/* When the chart's own certificates expire, in Unix seconds: those of the Secret an earlier
release made, unless they expire within tls.selfSigned.renewBeforeDays; else new ones, from now.
Nothing when the certificates are not the chart's (cert-manager's, or tls.existingSecret). Set on
the Secret and on the pods, which restart with renewed certificates. */}}
{{- define "memstage.tlsExpires" -}}
{{- if hasKey .Values "_tlsExpires" -}}
{{- /* decided once per render: the Secret's and the pods' must agree to the second */ -}}
{{- .Values._tlsExpires -}}
{{- else if not (or .Values.tls.certManager.enabled .Values.tls.existingSecret) -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-tls" (include "memstage.fullname" .)) -}}
{{- $now := now | unixEpoch | int64 -}}
{{- $expires := 0 -}}
{{- if and $existing $existing.data (index $existing.data "tls.crt") (index $existing.data "ca.key") -}}
{{- $expires = index ($existing.metadata.annotations | default dict) "memstage.io/tls-expires" | default "0" | int64 -}}
{{- end -}}
{{- if lt $expires (add $now (mul (int .Values.tls.selfSigned.renewBeforeDays) 86400)) -}}
{{- $expires = add $now (mul (int .Values.tls.selfSigned.days) 86400) -}}
{{- end -}}
{{- $_ := set .Values "_tlsExpires" (toString $expires) -}}
{{- $expires -}}
{{- end -}}
{{- end -}}

{{/* A role's pod annotations (the argument: the root context and the role's metrics port). */}}
{{- define "memstage.podAnnotations" -}}
{{- $root := index . 0 -}}
{{- $port := index . 1 -}}
{{- $expires := include "memstage.tlsExpires" $root -}}
{{- $scrape := and $root.Values.metrics.scrapeAnnotations $port -}}
{{- if or $expires $scrape }}
annotations:
  {{- if $expires }}
  memstage.io/tls-expires: {{ $expires | quote }}  # renewed certificates restart the pods
  {{- end }}
  {{- if $scrape }}
  prometheus.io/scrape: "true"
  prometheus.io/scheme: "https"  # the deployment's TLS certificate (Secret <release>-memstage-tls, ca.crt)
  prometheus.io/port: {{ $port | quote }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "memstage.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "memstage.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* What both roles' pods share (the argument: the root context and the role's values): the
service account (memstage never calls the Kubernetes API: no token mounted), pull secrets,
placement. */}}
{{- define "memstage.podCommon" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
serviceAccountName: {{ include "memstage.serviceAccountName" $root }}
automountServiceAccountToken: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $role.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $role.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $role.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A role's container hardening: nothing written outside its volumes (/tmp is an emptyDir). */}}
{{- define "memstage.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: ["ALL"]}
{{- end -}}

{{/* Probes (the argument: the role's gRPC port and how long it may take to start, in seconds).
Every gRPC port requires TLS with a client certificate, which Kubernetes' own grpc probe cannot
present: the probes run `memstage health` in the container, which asks the standard gRPC health
service over TLS with the roles' certificate (about 0.2 s of CPU a probe, hence the periods). */}}
{{- define "memstage.probes" -}}
{{- $port := index . 0 -}}
{{- $startSeconds := index . 1 | int -}}
{{- $exec := printf "exec: {command: [memstage, health, --tls-ca, /etc/memstage-tls/ca.crt, --tls-cert, /etc/memstage-tls/tls.crt, --tls-key, /etc/memstage-tls/tls.key, --tls-server-name, memstage, --timeout, 4s, \"127.0.0.1:%v\"]}" $port -}}
startupProbe:
  {{ $exec }}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: {{ max 1 (div $startSeconds 5) }}
readinessProbe:
  {{ $exec }}
  periodSeconds: 10
  timeoutSeconds: 5
livenessProbe:
  {{ $exec }}
  periodSeconds: 30
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* The benefactors' check that uid 10001 can write the PFS (sh; the message says what to do). */}}
{{- define "memstage.pfsCheck" -}}
f=/pfs/.memstage-write-check-$$; if touch "$f" && rm -f "$f"; then exit 0; fi; echo "the PFS volume ({{ .Values.pfs.type }}{{ if eq .Values.pfs.type "hostPath" }} {{ .Values.pfs.hostPath }}{{ end }}) is not writable by uid 10001: chown 10001 the directory, or make it group-writable and give the group in benefactor.supplementalGroups{{ if eq .Values.pfs.type "hostPath" }}, or set pfs.prepareHostPath{{ end }}" >&2; exit 1
{{- end -}}
