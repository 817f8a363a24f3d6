// Package healthtest runs modelloop's Argo CD health checks through Argo CD's own code.
//
// TestLuaHealthScript does what Argo CD's util/lua TestLuaHealthScript does for the checks Argo CD ships:
// it walks the resource_customizations tree and, for every case of every health_test.yaml, loads the
// object, finds its script with VM.GetHealthScript and runs it with VM.ExecuteHealthLua. Argo CD's own
// scripts are compiled into Argo CD; ours reach the VM the way a user's do, as resource overrides.
//
// TestArgoCDConfigMap then takes the path a running Argo CD takes: the ready-to-paste argocd-cm patch is
// read by Argo CD's settings manager, and every case is assessed by ResourceHealthOverrides, which runs the
// scripts without Lua's open libraries (as Argo CD does unless useOpenLibs is set).
//
// TestExampleApplication reads manifests/argocd/application.yaml as Argo CD's own types and diffs a
// ModelVersion through Argo CD's ignoreDifferences normalizer.
package healthtest

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/argoproj/argo-cd/gitops-engine/pkg/diff"
	"github.com/argoproj/argo-cd/gitops-engine/pkg/health"
	log "github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"

	appv1 "github.com/argoproj/argo-cd/v3/pkg/apis/application/v1alpha1"
	"github.com/argoproj/argo-cd/v3/util/argo/normalizers"
	"github.com/argoproj/argo-cd/v3/util/lua"
	"github.com/argoproj/argo-cd/v3/util/settings"
)

const (
	customizations = "../resource_customizations"
	group          = "modelloop.dev"
	crdDir         = "../../crds"
	configMapPatch = "../../manifests/argocd/argocd-cm-health.yaml"
	application    = "../../manifests/argocd/application.yaml"
	argoNamespace  = "argocd"
)

// TestStructure is a health_test.yaml, in Argo CD's format.
type TestStructure struct {
	Tests []IndividualTest `yaml:"tests"`
}

// IndividualTest is one case: the object at inputPath is expected to be assessed as healthStatus.
type IndividualTest struct {
	InputPath    string              `yaml:"inputPath"`
	HealthStatus health.HealthStatus `yaml:"healthStatus"`
}

// healthCheck is one kind's folder: <group>/<Kind>/{health.lua, health_test.yaml, testdata/}.
type healthCheck struct {
	dir    string
	gk     schema.GroupKind
	script string
	tests  []IndividualTest
}

func getObj(t *testing.T, path string) *unstructured.Unstructured {
	t.Helper()
	yamlBytes, err := os.ReadFile(path)
	require.NoError(t, err)
	obj := make(map[string]any)
	require.NoError(t, yaml.Unmarshal(yamlBytes, &obj))
	return &unstructured.Unstructured{Object: obj}
}

// healthChecks reads every health.lua under resource_customizations with its health_test.yaml.
func healthChecks(t *testing.T) []healthCheck {
	t.Helper()
	var checks []healthCheck
	err := filepath.Walk(customizations, func(path string, _ os.FileInfo, err error) error {
		require.NoError(t, err)
		if filepath.Base(path) != "health.lua" {
			return nil
		}
		dir := filepath.Dir(path)
		rel, err := filepath.Rel(customizations, dir)
		require.NoError(t, err)
		parts := strings.Split(filepath.ToSlash(rel), "/")
		require.Len(t, parts, 2, "%s: a health check lives in <group>/<Kind>/health.lua", path)
		script, err := os.ReadFile(path)
		require.NoError(t, err)
		yamlBytes, err := os.ReadFile(filepath.Join(dir, "health_test.yaml"))
		require.NoError(t, err, "%s has no health_test.yaml", dir)
		var resourceTest TestStructure
		require.NoError(t, yaml.UnmarshalStrict(yamlBytes, &resourceTest), "%s/health_test.yaml", dir)
		checks = append(checks, healthCheck{
			dir:    dir,
			gk:     schema.GroupKind{Group: parts[0], Kind: parts[1]},
			script: string(script),
			tests:  resourceTest.Tests,
		})
		return nil
	})
	require.NoError(t, err)
	return checks
}

// overrideKey is how Argo CD keys a kind's resource override (and its built-in scripts): group/Kind.
func overrideKey(gk schema.GroupKind) string {
	return lua.GetConfigMapKey(gk.WithVersion(""))
}

func testName(check healthCheck, test IndividualTest) string {
	return filepath.Join(strings.TrimPrefix(check.dir, customizations+"/"), test.InputPath)
}

func TestLuaHealthScript(t *testing.T) {
	for _, check := range healthChecks(t) {
		for i := range check.tests {
			test := check.tests[i]
			t.Run(testName(check, test), func(t *testing.T) {
				vm := lua.VM{
					UseOpenLibs: true,
					ResourceOverrides: map[string]appv1.ResourceOverride{
						overrideKey(check.gk): {HealthLua: check.script},
					},
				}
				obj := getObj(t, filepath.Join(check.dir, test.InputPath))
				script, _, err := vm.GetHealthScript(obj)
				require.NoError(t, err)
				require.NotEmpty(t, script, "no health script for %s: apiVersion or kind of the test object is wrong", obj.GroupVersionKind())
				result, err := vm.ExecuteHealthLua(obj, script)
				require.NoError(t, err)
				assert.Equal(t, &test.HealthStatus, result)
			})
		}
	}
}

// crdKinds are the kinds of the group's CRDs: every one of them needs a health check.
func crdKinds(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(crdDir, "*.yaml"))
	require.NoError(t, err)
	var kinds []string
	for _, file := range files {
		var crd struct {
			Spec struct {
				Group string `json:"group"`
				Names struct {
					Kind string `json:"kind"`
				} `json:"names"`
			} `json:"spec"`
		}
		data, err := os.ReadFile(file)
		require.NoError(t, err)
		require.NoError(t, yaml.Unmarshal(data, &crd), file)
		if crd.Spec.Group == group {
			kinds = append(kinds, crd.Spec.Names.Kind)
		}
	}
	require.NotEmpty(t, kinds, "no %s CRDs in %s", group, crdDir)
	return kinds
}

func TestEveryKindHasTestedHealthCheck(t *testing.T) {
	checks := healthChecks(t)
	tested := map[string]healthCheck{}
	for _, check := range checks {
		tested[check.gk.Kind] = check
	}
	for _, kind := range crdKinds(t) {
		t.Run(kind, func(t *testing.T) {
			check, ok := tested[kind]
			require.True(t, ok, "%s/%s/health.lua is missing", group, kind)
			assert.NotEmpty(t, check.tests, "%s/health_test.yaml has no tests", check.dir)
			used := map[string]bool{}
			for _, test := range check.tests {
				used[filepath.Clean(test.InputPath)] = true
			}
			inputs, err := filepath.Glob(filepath.Join(check.dir, "testdata", "*.yaml"))
			require.NoError(t, err)
			for _, input := range inputs {
				rel, err := filepath.Rel(check.dir, input)
				require.NoError(t, err)
				assert.True(t, used[rel], "%s is not used by any test", input)
			}
		})
	}
	for _, check := range checks {
		assert.Equal(t, group, check.gk.Group, "%s: only %s kinds belong here", check.dir, group)
	}
}

// configMapOverrides reads the argocd-cm patch the way Argo CD reads argocd-cm.
func configMapOverrides(t *testing.T) map[string]appv1.ResourceOverride {
	t.Helper()
	data, err := os.ReadFile(configMapPatch)
	require.NoError(t, err)
	var cm corev1.ConfigMap
	require.NoError(t, yaml.UnmarshalStrict(data, &cm))
	cm.Namespace = argoNamespace // the patch names none: it applies to argocd-cm wherever Argo CD runs
	log.SetLevel(log.WarnLevel)  // the settings manager's informers tell of every start and stop
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	manager := settings.NewSettingsManager(ctx, fake.NewClientset(&cm), argoNamespace)
	overrides, err := manager.GetResourceOverrides()
	require.NoError(t, err)
	return overrides
}

func TestArgoCDConfigMap(t *testing.T) {
	overrides := configMapOverrides(t)
	checks := healthChecks(t)
	var keys []string
	for _, check := range checks {
		key := overrideKey(check.gk)
		keys = append(keys, key)
		require.Contains(t, overrides, key, "%s has no resource.customizations.health entry", configMapPatch)
		assert.Equal(t, check.script, overrides[key].HealthLua, "%s is stale: run hack/argocd_health.py", configMapPatch)
		assert.False(t, overrides[key].UseOpenLibs, "the scripts must run without Lua's open libraries")
	}
	for key, override := range overrides {
		if override.HealthLua != "" {
			assert.True(t, slices.Contains(keys, key), "%s has a health check for %s, which has no folder", configMapPatch, key)
		}
	}
	for _, check := range checks {
		for i := range check.tests {
			test := check.tests[i]
			t.Run(testName(check, test), func(t *testing.T) {
				obj := getObj(t, filepath.Join(check.dir, test.InputPath))
				result, err := lua.ResourceHealthOverrides(overrides).GetResourceHealth(obj)
				require.NoError(t, err)
				assert.Equal(t, &test.HealthStatus, result)
			})
		}
	}
}

// A ModelVersion as its author committed it, and as the cluster has it once the API server recorded who
// created it and the registry made it Champion.
const committedModelVersion = `
apiVersion: modelloop.dev/v1alpha1
kind: ModelVersion
metadata:
  name: iris-v3
  namespace: ml
  labels: {team: fraud, modelloop.dev/model: iris, modelloop.dev/stage: candidate}
  annotations: {modelloop.dev/requested-stage: Champion}
spec: {modelName: iris, version: 3, artifact: {uri: "s3://models/iris/3/model.joblib"}}
`

const liveModelVersion = `
apiVersion: modelloop.dev/v1alpha1
kind: ModelVersion
metadata:
  name: iris-v3
  namespace: ml
  labels: {team: fraud, modelloop.dev/model: iris, modelloop.dev/stage: champion}
  annotations:
    modelloop.dev/requested-stage: Champion
    modelloop.dev/registered-by: system:serviceaccount:argocd:argocd-application-controller
spec: {modelName: iris, version: 3, artifact: {uri: "s3://models/iris/3/model.joblib"}}
`

func normalized(t *testing.T, normalizer diff.Normalizer, manifest string) map[string]any {
	t.Helper()
	obj := make(map[string]any)
	require.NoError(t, yaml.Unmarshal([]byte(manifest), &obj))
	un := &unstructured.Unstructured{Object: obj}
	require.NoError(t, normalizer.Normalize(un))
	return un.Object
}

// TestExampleApplication reads the example Application as Argo CD's own types (an unknown field fails) and
// diffs a ModelVersion through Argo CD's ignoreDifferences normalizer: what the operator and the API server
// write is ignored, what a user asks for is not.
func TestExampleApplication(t *testing.T) {
	data, err := os.ReadFile(application)
	require.NoError(t, err)
	var app appv1.Application
	require.NoError(t, yaml.UnmarshalStrict(data, &app))
	assert.Contains(t, app.Spec.SyncPolicy.SyncOptions, "ServerSideApply=true")
	assert.Contains(t, app.Spec.SyncPolicy.SyncOptions, "RespectIgnoreDifferences=true")

	normalizer, err := normalizers.NewIgnoreNormalizer(app.Spec.IgnoreDifferences, nil, normalizers.IgnoreNormalizerOpts{})
	require.NoError(t, err)
	committed := normalized(t, normalizer, committedModelVersion)
	assert.Equal(t, committed, normalized(t, normalizer, liveModelVersion))

	withdrawn := strings.Replace(liveModelVersion, "modelloop.dev/requested-stage: Champion", "modelloop.dev/requested-stage: Archived", 1)
	assert.NotEqual(t, committed, normalized(t, normalizer, withdrawn), "a changed stage request must show as a difference")
}
