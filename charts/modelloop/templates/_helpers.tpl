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

{{/*
An image block's reference: repository@digest when a digest is given, else repository:tag (the tag
defaulting to appVersion). Called with (dict "image" <the block> "context" $).
*/}}
{{- define "modelloop.imageRef" -}}
{{- $image := .image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .context.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The operator's image. */}}
{{- define "modelloop.image" -}}
{{- include "modelloop.imageRef" (dict "image" .Values.image "context" .) }}
{{- end }}

{{- define "modelloop.metricsServiceName" -}}
{{- printf "%s-metrics" (include "modelloop.fullname" .) }}
{{- end }}

{{- define "modelloop.detectorName" -}}
{{- printf "%s-detector" (include "modelloop.fullname" .) }}
{{- end }}

{{/* The detector pod's selector; never changes between chart versions (a selector is immutable). */}}
{{- define "modelloop.detectorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "modelloop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: detector
{{- end }}

{{/* Labels of the detector's objects. */}}
{{- define "modelloop.detectorLabels" -}}
{{ include "modelloop.labels" . }}
app.kubernetes.io/component: detector
{{- end }}

{{/* The detector's in-cluster URL: the payload logger's and the DriftPolicy's. */}}
{{- define "modelloop.detectorUrl" -}}
{{- printf "http://%s.%s.svc:8080" (include "modelloop.detectorName" .) .Release.Namespace }}
{{- end }}
