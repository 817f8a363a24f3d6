{{/* The chart's name, or nameOverride. */}}
{{- define "modelloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every name the chart gives: fullnameOverride, else the release name when it already
contains the chart's name, else <release>-<chart>. Cut to 50 characters, so that suffixes such as
"-registered-by" keep names within 63.
*/}}
{{- define "modelloop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "modelloop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that say which release installed an object: on everything, CRDs included. */}}
{{- define "modelloop.releaseLabels" -}}
helm.sh/chart: {{ include "modelloop.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of the operator's own objects (the CRDs carry the API's labels instead). */}}
{{- define "modelloop.labels" -}}
{{ include "modelloop.releaseLabels" . }}
app.kubernetes.io/name: {{ include "modelloop.name" . }}
app.kubernetes.io/part-of: modelloop
{{- end }}

{{/* The operator pod's selector; never changes between chart versions (a selector is immutable). */}}
{{- define "modelloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelloop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of the operator's pods: the selector's and the release's. */}}
{{- define "modelloop.podLabels" -}}
{{ include "modelloop.selectorLabels" . }}
helm.sh/chart: {{ include "modelloop.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelloop
{{- end }}

{{- define "modelloop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelloop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Whether the replicas peer: always with several, and on request with one. */}}
{{- define "modelloop.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "modelloop.peeringName" -}}
{{- default (include "modelloop.fullname" .) .Values.peering.name }}
{{- end }}

{{/* repository@digest when a digest is given, else repository:tag (the tag defaulting to appVersion). */}}
{{- define "modelloop.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "modelloop.metricsServiceName" -}}
{{- printf "%s-metrics" (include "modelloop.fullname" .) }}
{{- end }}
