{{/*
"true" when the operator's rights are bound namespace by namespace: operator.watchNamespaces names
namespaces and only namespaces. A pattern (`ml-*`, `!kube-system`) also matches namespaces made after the
install, which no RoleBinding made now can cover: with one, the rights are bound cluster-wide.
*/}}
{{- define "modelloop.rbacPerNamespace" -}}
{{- $literal := true }}
{{- range .Values.operator.watchNamespaces }}
{{- if or (gt (len .) 63) (not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .)) }}
{{- $literal = false }}
{{- end }}
{{- end }}
{{- if and .Values.operator.watchNamespaces $literal }}true{{ end }}
{{- end }}
