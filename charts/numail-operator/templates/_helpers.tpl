{{/* Names, labels, the image and the security contexts shared by every template. */}}

{{- define "numail.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name: the release name if it already says numail-operator. */}}
{{- define "numail.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "numail.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "numail.keyserviceName" -}}
{{- printf "%s-keyservice" (include "numail.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "numail.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "numail.selectorLabels" -}}
app.kubernetes.io/name: {{ include "numail.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "numail.labels" -}}
helm.sh/chart: {{ include "numail.chart" . }}
{{ include "numail.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: numail
{{- end -}}

{{/* Labels of one component: include with (dict "root" $ "component" "operator"). */}}
{{- define "numail.componentLabels" -}}
{{ include "numail.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "numail.componentSelector" -}}
{{ include "numail.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "numail.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "numail.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "numail.keyserviceServiceAccount" -}}
{{- if .Values.keyservice.serviceAccount.create -}}
{{- default (include "numail.keyserviceName" .) .Values.keyservice.serviceAccount.name -}}
{{- else -}}
{{- required "keyservice.serviceAccount.name is required when keyservice.serviceAccount.create is false" .Values.keyservice.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "numail.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "numail.keyringSecretName" -}}
{{- default (printf "%s-local-keyring" (include "numail.fullname" .)) .Values.localKeyring.existingSecret -}}
{{- end -}}

{{/* Which Secret holds the key service's certificate, and whether this chart must make it. */}}
{{- define "numail.tlsMode" -}}
{{- if .Values.keyservice.tls.existingSecret -}}existing
{{- else if .Values.keyservice.tls.certManager.enabled -}}certManager
{{- else -}}selfSigned
{{- end -}}
{{- end -}}

{{- define "numail.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "numail.keyserviceName" .)) .Values.keyservice.tls.existingSecret -}}
{{- end -}}

{{- define "numail.keyserviceDNSNames" -}}
{{- $svc := include "numail.keyserviceName" . -}}
- {{ $svc }}.{{ .Release.Namespace }}.svc
- {{ $svc }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}
- {{ $svc }}.{{ .Release.Namespace }}
- {{ $svc }}
{{- end -}}

{{- define "numail.keyserviceURL" -}}
{{- printf "https://%s.%s.svc:%d" (include "numail.keyserviceName" .) .Release.Namespace (int .Values.keyservice.port) -}}
{{- end -}}

{{/* Pod Security "restricted", for every Pod this chart makes. */}}
{{- define "numail.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "numail.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Soft anti-affinity across nodes, used when the component's affinity value is empty. */}}
{{- define "numail.affinity" -}}
{{- if .values.affinity -}}
{{ toYaml .values.affinity }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "numail.componentSelector" (dict "root" .root "component" .component) | nindent 12 }}
{{- end -}}
{{- end -}}

{{/* nodeSelector, tolerations, affinity, spread and priority: passed through from values. */}}
{{- define "numail.scheduling" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
  {{- include "numail.affinity" . | nindent 2 }}
{{- end -}}

{{/*
"true" if Helm may own the ClusterRole .name in this release: it is absent, or it carries this
release's ownership marks (Helm's label and annotations), as Helm's adoption check demands.
Once the operator has applied it, its managed-by label is the operator's, and it is left alone.
*/}}
{{- define "numail.helmMayOwnClusterRole" -}}
{{- $live := lookup "rbac.authorization.k8s.io/v1" "ClusterRole" "" .name -}}
{{- if not $live -}}
true
{{- else -}}
{{- $annotations := dig "metadata" "annotations" dict $live -}}
{{- $labels := dig "metadata" "labels" dict $live -}}
{{- if and (eq (get $labels "app.kubernetes.io/managed-by") "Helm") (eq (get $annotations "meta.helm.sh/release-name") .root.Release.Name) (eq (get $annotations "meta.helm.sh/release-namespace") .root.Release.Namespace) -}}
true
{{- end -}}
{{- end -}}
{{- end -}}
