{{/* Names: the chart name, and the release-qualified full name (63 characters at most, DNS-safe). */}}
{{- define "pos-coupon-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pos-coupon-gateway.fullname" -}}
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

{{- define "pos-coupon-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pos-coupon-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pos-coupon-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pos-coupon-gateway.labels" -}}
helm.sh/chart: {{ include "pos-coupon-gateway.chart" . }}
{{ include "pos-coupon-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pos-coupon-gateway
{{- end }}

{{- define "pos-coupon-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pos-coupon-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pos-coupon-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* "true" when the ledger is in Redis (REDIS_URL set from values or a Secret), "" otherwise. */}}
{{- define "pos-coupon-gateway.redisEnabled" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}true{{ end }}
{{- end }}

{{/* "true" when the API-keys file is mounted and named in GATEWAY_API_KEYS_FILE, "" otherwise. */}}
{{- define "pos-coupon-gateway.apiKeysMounted" -}}
{{- if and .Values.apiKeys.enabled (or .Values.apiKeys.existingSecret .Values.apiKeys.content) }}true{{ end }}
{{- end }}

{{/* The chart's own Secret: created only when a secret value is given inline. */}}
{{- define "pos-coupon-gateway.secretName" -}}
{{- include "pos-coupon-gateway.fullname" . }}
{{- end }}

{{- define "pos-coupon-gateway.secretData" -}}
{{- include "pos-coupon-gateway.envSecretData" . }}
{{- if and .Values.apiKeys.enabled .Values.apiKeys.content }}
api-keys: {{ .Values.apiKeys.content | quote }}
{{- end }}
{{- end }}

{{/* The Secret's values read into the environment (read once, at start: a change must roll the pods). The API-keys
file is left out: the gateway re-reads it when the mounted Secret changes, without a restart. */}}
{{- define "pos-coupon-gateway.envSecretData" -}}
{{- $c := .Values.capillary }}
{{- if $c.clientKey }}
CAPILLARY_CLIENT_KEY: {{ $c.clientKey | quote }}
{{- end }}
{{- if $c.clientSecret }}
CAPILLARY_CLIENT_SECRET: {{ $c.clientSecret | quote }}
{{- end }}
{{- if $c.tillUsername }}
CAPILLARY_TILL_USERNAME: {{ $c.tillUsername | quote }}
{{- end }}
{{- if $c.tillPassword }}
CAPILLARY_TILL_PASSWORD: {{ $c.tillPassword | quote }}
{{- end }}
{{- if .Values.redis.url }}
REDIS_URL: {{ .Values.redis.url | quote }}
{{- end }}
{{- if .Values.cache.url }}
CACHE_URL: {{ .Values.cache.url | quote }}
{{- end }}
{{- end }}

{{/* Whole seconds from the preStop hook to the gateway's exit: the preStop sleep, then after SIGTERM the grace it
keeps accepting for and the time in-flight requests get (each rounded up). */}}
{{- define "pos-coupon-gateway.stopSeconds" -}}
{{- add (int .Values.preStopSleepSeconds) (ceil .Values.gateway.shutdownGraceSeconds | int) (ceil .Values.gateway.shutdownTimeoutSeconds | int) }}
{{- end }}

{{/* Seconds Kubernetes waits after the preStop hook starts: above the preStop sleep plus the gateway's own drain. */}}
{{- define "pos-coupon-gateway.gracePeriod" -}}
{{- $floor := int (include "pos-coupon-gateway.stopSeconds" .) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $floor 10 }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
Checks the schema cannot express. Each failure names the values to change.
*/}}
{{- define "pos-coupon-gateway.validate" -}}
{{- $redis := include "pos-coupon-gateway.redisEnabled" . }}
{{- $maxPods := int .Values.replicaCount }}
{{- if .Values.autoscaling.enabled }}
{{- $maxPods = int .Values.autoscaling.maxReplicas }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
{{- if and (gt $maxPods 1) (not $redis) }}
{{- fail (printf "%d replicas need Redis: the in-memory ledger and coupon locks are per pod, so two pods could redeem one coupon twice. Set redis.url or redis.existingSecret, or run one replica (replicaCount: 1, autoscaling.maxReplicas: 1)" $maxPods) }}
{{- end }}
{{- if and .Values.sandbox.enabled (gt $maxPods 1) }}
{{- fail "sandbox.enabled runs one fake Capillary per pod: run one replica" }}
{{- end }}
{{- $floor := int (include "pos-coupon-gateway.stopSeconds" .) }}
{{- if le (int (include "pos-coupon-gateway.gracePeriod" .)) $floor }}
{{- fail (printf "terminationGracePeriodSeconds must exceed preStopSleepSeconds + gateway.shutdownGraceSeconds + gateway.shutdownTimeoutSeconds (%d), or in-flight redemptions are killed mid-call" $floor) }}
{{- end }}
{{- if and (not (kindIs "invalid" .Values.gateway.metricsPort)) (eq (int .Values.gateway.metricsPort) (int .Values.gateway.port)) }}
{{- fail "gateway.metricsPort must differ from gateway.port (null keeps /metrics on the API port)" }}
{{- end }}
{{- $c := .Values.capillary }}
{{- if and $c.existingSecret (or $c.clientKey $c.clientSecret $c.tillUsername $c.tillPassword) }}
{{- fail "capillary: give either existingSecret or inline credentials, not both" }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.existingSecret }}
{{- fail "redis: give either url or existingSecret, not both" }}
{{- end }}
{{- if and .Values.cache.url .Values.cache.existingSecret }}
{{- fail "cache: give either url or existingSecret, not both" }}
{{- end }}
{{- $keys := .Values.apiKeys }}
{{- if and $keys.existingSecret $keys.content }}
{{- fail "apiKeys: give either existingSecret or content, not both" }}
{{- end }}
{{- if not .Values.sandbox.enabled }}
{{- if not $keys.enabled }}
{{- fail "apiKeys.enabled: false is for sandbox.enabled only: `coupon-gateway serve` does not start without its API-keys file (GATEWAY_API_KEYS_FILE)" }}
{{- end }}
{{- if not (or $keys.existingSecret $keys.content) }}
{{- fail "apiKeys: `coupon-gateway serve` does not start without its API-keys file (GATEWAY_API_KEYS_FILE). Set apiKeys.existingSecret to a Secret holding the file under apiKeys.existingSecretKey (recommended), or apiKeys.content to the file itself (docs/api.md, \"Access\"); or run the demo (sandbox.enabled)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The container's environment beyond the ConfigMap: secrets by reference, the API-keys file, extraEnv. */}}
{{- define "pos-coupon-gateway.env" -}}
{{- $fullname := include "pos-coupon-gateway.fullname" . }}
{{- $c := .Values.capillary }}
{{- if not .Values.sandbox.enabled }}
{{- $credentials := ternary (list "clientKey" "clientSecret") (list "tillUsername" "tillPassword") (eq $c.auth "oauth") }}
{{- range $field := $credentials }}
{{- $variable := get $c.existingSecretKeys $field | default "" }}
{{- $envName := get (dict "clientKey" "CAPILLARY_CLIENT_KEY" "clientSecret" "CAPILLARY_CLIENT_SECRET" "tillUsername" "CAPILLARY_TILL_USERNAME" "tillPassword" "CAPILLARY_TILL_PASSWORD") $field }}
{{- if $c.existingSecret }}
- name: {{ $envName }}
  valueFrom:
    secretKeyRef:
      name: {{ $c.existingSecret }}
      key: {{ $variable }}
{{- else if get $c $field }}
- name: {{ $envName }}
  valueFrom:
    secretKeyRef:
      name: {{ $fullname }}
      key: {{ $envName }}
{{- end }}
{{- end }}
{{- end }}
{{- if or .Values.redis.url .Values.redis.existingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret | default $fullname }}
      key: {{ ternary .Values.redis.existingSecretKey "REDIS_URL" (not (empty .Values.redis.existingSecret)) }}
{{- end }}
{{- if or .Values.cache.url .Values.cache.existingSecret }}
- name: CACHE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.cache.existingSecret | default $fullname }}
      key: {{ ternary .Values.cache.existingSecretKey "CACHE_URL" (not (empty .Values.cache.existingSecret)) }}
{{- end }}
{{- if include "pos-coupon-gateway.apiKeysMounted" . }}
- name: GATEWAY_API_KEYS_FILE
  value: {{ printf "%s/api-keys" (trimSuffix "/" .Values.apiKeys.mountPath) | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end }}
