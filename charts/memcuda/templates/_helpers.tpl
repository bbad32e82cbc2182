{{- define "memcuda.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "memcuda.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "memcuda.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "memcuda.labels" -}}
app.kubernetes.io/name: {{ include "memcuda.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "memcuda.selector" -}}
app.kubernetes.io/name: {{ include "memcuda.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- /* The bundled Redis's Secret: its agent password, generated once and kept across upgrades. */ -}}
{{- define "memcuda.redisSecret" -}}
{{- printf "%s-redis" (include "memcuda.fullname" .) -}}
{{- end -}}

{{- define "memcuda.redisURL" -}}
{{- if .Values.redis.bundled -}}
redis://{{ include "memcuda.fullname" . }}-redis:6379/0
{{- else -}}
{{- required "redis.url is required when redis.bundled is false" .Values.redis.url -}}
{{- end -}}
{{- end -}}
