{{/*
The drift detectors to render, as a JSON list of {"namespace": where it runs, "serves": the namespace it
serves, its MODELLOOP_DETECTOR_NAMESPACE, "" for every one}: with detector.mode shared, one in the
release's namespace that serves every namespace; with perNamespace, one in each of the detector's
namespaces (modelloop.detectorNamespaces) that serves that namespace only.
*/}}
{{- define "modelloop.detectorTargets" -}}
{{- if eq .Values.detector.mode "perNamespace" }}
{{- $targets := list }}
{{- range include "modelloop.detectorNamespaces" . | fromJsonArray }}
{{- $targets = append $targets (dict "namespace" . "serves" .) }}
{{- end }}
{{- toJson $targets }}
{{- else }}
{{- toJson (list (dict "namespace" .Release.Namespace "serves" "")) }}
{{- end }}
{{- end }}

{{/*
The namespaces of the perNamespace detectors, as a JSON list: detector.namespaces, else the namespaces
the operator watches when operator.watchNamespaces names namespaces only. A pattern (`team-*`) or an empty
list (the whole cluster) names no namespace to put a detector in: the render fails, asking for the list.
*/}}
{{- define "modelloop.detectorNamespaces" -}}
{{- $namespaces := .Values.detector.namespaces }}
{{- if not $namespaces }}
{{- if include "modelloop.rbacPerNamespace" . }}
{{- $namespaces = .Values.operator.watchNamespaces }}
{{- else }}
{{- fail "detector.mode perNamespace runs a detector in each namespace of detector.namespaces: list them there (operator.watchNamespaces, its default, watches the whole cluster or has patterns, so it names no namespaces)" }}
{{- end }}
{{- end }}
{{- toJson (uniq $namespaces) }}
{{- end }}
