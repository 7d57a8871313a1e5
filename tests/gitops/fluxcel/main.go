// fluxcel prints the health status Flux's kustomize-controller computes for objects from
// a Kustomization's spec.healthCheckExprs, with Flux's own code: the checks go to
// github.com/fluxcd/pkg/runtime/cel.NewStatusReader as kustomize-controller passes
// obj.Spec.HealthCheckExprs to it, and each object is read through that status reader
// (ReadStatusForObject: the observedGeneration rule, then inProgress, failed, current).
// An expression that errs gives status Unknown and the error, which Flux's wait keeps
// polling and reports at its timeout.
//
// Input on stdin, one JSON document:
//
//	{"healthCheckExprs": [{"apiVersion": "...", "kind": "...", "current": "...", ...}],
//	 "objects": [<an object as the API server returns it>, ...]}
//
// Output: one JSON line per object, {"status": "Current", "message": "", "error": ""}.
// Exit status 2 when the input or an expression is refused (kustomize-controller's
// InvalidCELExpression).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/fluxcd/pkg/apis/kustomize"
	"github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	sigsjson "sigs.k8s.io/json"
)

type input struct {
	HealthCheckExprs []kustomize.CustomHealthCheck `json:"healthCheckExprs"`
	Objects          []json.RawMessage             `json:"objects"`
}

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "fluxcel: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	var in input
	// As the API server decodes a Kustomization: case-sensitive, unknown fields refused
	// (a misspelt "inprogress" would otherwise be silently dropped).
	strict, err := sigsjson.UnmarshalStrict(data, &in)
	if err != nil {
		fail("decoding stdin: %v", err)
	}
	if len(strict) > 0 {
		fail("decoding stdin: %v", strict)
	}
	newReader, err := cel.NewStatusReader(in.HealthCheckExprs)
	if err != nil {
		fail("%v", err)
	}
	reader := newReader(nil) // the generic reader needs no RESTMapper for ReadStatusForObject

	ctx := context.Background()
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	for i, raw := range in.Objects {
		// What client-go does with an API response: integers stay int64, which the
		// observedGeneration rule (unstructured.NestedInt64) relies on.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			fail("objects[%d]: %v", i, err)
		}
		rs, err := reader.ReadStatusForObject(ctx, nil, u)
		if err != nil {
			fail("objects[%d]: %v", i, err)
		}
		r := result{Status: rs.Status.String(), Message: rs.Message}
		if rs.Error != nil {
			r.Error = rs.Error.Error()
		}
		if err := enc.Encode(r); err != nil {
			fail("writing stdout: %v", err)
		}
	}
}
