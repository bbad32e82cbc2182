package v1alpha1

import (
	"strings"
	"testing"
)

func TestParseTensors(t *testing.T) {
	good := `[{"name":"weights","dtype":"bf16","shape":[4096,4096],"create":true},{"name":"team-a/embeddings"}]`
	reqs, err := ParseTensors(good)
	if err != nil || len(reqs) != 2 || !reqs[0].Create || reqs[1].Name != "team-a/embeddings" {
		t.Fatalf("%+v %v", reqs, err)
	}
	for _, tc := range []struct{ in, want string }{
		{`{"name":"x"}`, "JSON list"},
		{`[{"name":"x","shap":[1]}]`, "unknown field"},
		{`[{"name":""}]`, "empty"},
		{`[{"name":"x","create":true}]`, "create needs dtype and shape"},
		{`[{"name":"x"},{"name":"x"}]`, "twice"},
		{`[{"name":"a/b/c"}]`, "namespace"},
		{`[{"name":"/b"}]`, "namespace"},
	} {
		if _, err := ParseTensors(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseTensors(%s) = %v, want an error with %q", tc.in, err, tc.want)
		}
	}
}

func TestScopingAndSharing(t *testing.T) {
	if Scoped("ns", "w") != "ns/w" || Scoped("ns", "other/w") != "other/w" || Owner("other/w") != "other" {
		t.Fatal("scoping")
	}
	if !Shares("a, b", "b") || Shares("a,b", "c") || !Shares("*", "z") || Shares("", "a") {
		t.Fatal("sharing")
	}
}
