{{- define "memstage.fullname" -}}
{{- printf "%s-memstage" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "memstage.labels" -}}
app.kubernetes.io/name: memstage
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
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
{{- if .Values.tls.certManager.enabled -}}
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
