{{/* Names: cut to 63 characters, the limit of a DNS label and of a label value. */}}
{{- define "kubedistill.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubedistill.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The full name with a suffix, cut so that the suffix survives. Call with (list . "suffix"). */}}
{{- define "kubedistill.suffixedName" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $base := include "kubedistill.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s-%s" $base $suffix -}}
{{- end -}}

{{- define "kubedistill.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels carry the component: the Ray pods of a job named like the release also carry
app.kubernetes.io/name=kubedistill and app.kubernetes.io/instance=<job>.
*/}}
{{- define "kubedistill.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubedistill.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubedistill.labels" -}}
helm.sh/chart: {{ include "kubedistill.chart" . }}
{{ include "kubedistill.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kubedistill.serviceAccountName" -}}
{{- include "kubedistill.fullname" . -}}
{{- end -}}

{{- define "kubedistill.operatorImage" -}}
{{- $image := .Values.image.operator -}}
{{- include "kubedistill.imageRef" (list $image.repository (default .Chart.AppVersion $image.tag)) -}}
{{- end -}}

{{- define "kubedistill.runtimeImage" -}}
{{- $image := .Values.image.runtime -}}
{{- include "kubedistill.imageRef" (list $image.repository (default .Chart.AppVersion $image.tag)) -}}
{{- end -}}

{{/* repository:tag, or repository@digest when the "tag" is only a digest. */}}
{{- define "kubedistill.imageRef" -}}
{{- $repository := index . 0 -}}
{{- $tag := index . 1 | toString -}}
{{- if hasPrefix "@" $tag -}}
{{- printf "%s%s" $repository $tag -}}
{{- else if hasPrefix "sha256:" $tag -}}
{{- printf "%s@%s" $repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches, as a JSON list; empty for rbac.scope=cluster (all of them). */}}
{{- define "kubedistill.watchNamespaces" -}}
{{- if eq .Values.rbac.scope "cluster" -}}
{{- list | toJson -}}
{{- else if .Values.watchNamespaces -}}
{{- .Values.watchNamespaces | toJson -}}
{{- else -}}
{{- list .Release.Namespace | toJson -}}
{{- end -}}
{{- end -}}

{{/*
The operator's RBAC rules: kubedistill.operator.rbac.rules_for(clusterwide=..., peering=...), which
tests/charts checks this against for every scope and peering setting.
*/}}
{{- define "kubedistill.rules" -}}
- apiGroups: ["kubedistill.io"]
  resources: ["distillationjobs"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kubedistill.io"]
  resources: ["distillationjobs/status"]
  verbs: ["patch"]
# Children block their job's deletion (ownerReferences); OpenShift's admission checks this for it.
- apiGroups: ["kubedistill.io"]
  resources: ["distillationjobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.peering.name }}
- apiGroups: ["kopf.dev"]
  resources: [{{ eq .Values.rbac.scope "cluster" | ternary "clusterkopfpeerings" "kopfpeerings" | quote }}]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/* Combinations the schema cannot express; each failure names the values key to change. */}}
{{- define "kubedistill.validate" -}}
{{- if and (eq .Values.rbac.scope "cluster") .Values.watchNamespaces -}}
{{- fail "watchNamespaces: only used with rbac.scope=namespace (rbac.scope=cluster watches every namespace); set rbac.scope=namespace or leave watchNamespaces empty" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.name) -}}
{{- fail (printf "replicaCount: %d replicas need peering.name (without a kopf peering every replica would reconcile every job)" (int .Values.replicaCount)) -}}
{{- end -}}
{{- if eq (int .Values.metrics.port) (int .Values.operator.livenessPort) -}}
{{- fail (printf "metrics.port: %d is also operator.livenessPort; both listen in the operator container" (int .Values.metrics.port)) -}}
{{- end -}}
{{- if ge (float64 .Values.operator.scrapeTimeoutSeconds) (float64 .Values.operator.scrapePeriodSeconds) -}}
{{- fail "operator.scrapeTimeoutSeconds: must be less than operator.scrapePeriodSeconds" -}}
{{- end -}}
{{- end -}}
