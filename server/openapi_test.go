package server

import (
	"encoding/json"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// openAPI is the part of api/openapi.json the drift test reads.
type openAPI struct {
	OpenAPI string                                `json:"openapi"`
	Paths   map[string]map[string]json.RawMessage `json:"paths"`
}

type operation struct {
	Responses map[string]json.RawMessage `json:"responses"`
}

var httpMethods = []string{"get", "head", "post", "put", "patch", "delete", "options"}

func loadOpenAPI(t *testing.T) openAPI {
	t.Helper()
	b, err := os.ReadFile("../api/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc openAPI
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("api/openapi.json: %v", err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi %q, want 3.1.0", doc.OpenAPI)
	}
	return doc
}

func (d openAPI) statuses(t *testing.T, path, method string) []string {
	t.Helper()
	raw, ok := d.Paths[path][method]
	if !ok {
		return nil
	}
	var op operation
	if err := json.Unmarshal(raw, &op); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	var out []string
	for code := range op.Responses {
		out = append(out, code)
	}
	sort.Strings(out)
	return out
}

// TestOpenAPIMatchesRoutes checks api/openapi.json against the real server:
// every route is documented; every documented path answers its documented
// methods, 405 with the documented Allow to the others; and every status
// that probes of each operation get is documented for it.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	docPath := func(route int) string { return routeNames[route] }
	for r := range numRoutes {
		if r == routeOther {
			continue
		}
		if _, ok := doc.Paths[docPath(r)]; !ok {
			t.Errorf("route %s is not in api/openapi.json", docPath(r))
		}
	}

	s := newTestServer(t, Config{DataDir: t.TempDir(), MaxBatchItems: 100})
	addr := startTCP(t, s)
	resp := httpDo(t, addr, "POST", "/api/usages", map[string]string{"Content-Type": "application/json"}, []byte(sample))
	if resp.StatusCode() != 201 {
		t.Fatalf("POST: %d", resp.StatusCode())
	}
	stored := strings.TrimSuffix(strings.TrimPrefix(string(resp.Body()), `{"id":`), "}")

	type probe struct {
		headers map[string]string
		body    string
		query   string
	}
	jsonCT := map[string]string{"Content-Type": "application/json"}
	probes := map[string][]probe{
		"post /api/usages": {
			{jsonCT, sample, ""}, {jsonCT, "{", ""}, {jsonCT, strings.Repeat("x", 20000), ""},
			{map[string]string{"Content-Type": "text/plain"}, sample, ""},
			{map[string]string{"Content-Type": "application/json", "Content-Encoding": "br"}, sample, ""},
			{map[string]string{"Content-Type": "application/json", "Idempotency-Key": "k"}, sample, ""},
			{map[string]string{"Content-Type": "application/json", "Idempotency-Key": "k"}, strings.Replace(sample, "100", "7", 1), ""},
		},
		"post /api/usages/batch": {
			{map[string]string{"Content-Type": "application/x-ndjson"}, sample + "\n" + sample, ""},
			{jsonCT, "[" + sample + "]", ""}, {jsonCT, "[" + sample + ",{}]", ""},
			{map[string]string{"Content-Type": "application/x-ndjson"}, strings.Repeat(sample+"\n", 101), ""},
			{map[string]string{"Content-Type": "text/csv"}, sample, ""},
		},
		"get /api/usages/{id}":   {{nil, "", ""}},
		"get /api/usages/export": {{nil, "", ""}, {nil, "", "?cursor=zz"}, {nil, "", "?limit=0"}},
	}
	for path, ops := range doc.Paths {
		var documented []string
		for _, m := range httpMethods {
			if _, ok := ops[m]; ok {
				documented = append(documented, strings.ToUpper(m))
			}
		}
		uri := strings.ReplaceAll(path, "{id}", stored)
		for _, m := range httpMethods {
			method := strings.ToUpper(m)
			codes := doc.statuses(t, path, m)
			if codes == nil {
				// Undocumented method: 405 with the documented Allow.
				r := httpDo(t, addr, method, uri, nil, nil)
				allow := strings.Split(string(r.Header.Peek("Allow")), ", ")
				sort.Strings(allow)
				want := slices.Clone(documented)
				sort.Strings(want)
				if r.StatusCode() != 405 || !slices.Equal(allow, want) {
					t.Errorf("%s %s: %d, Allow %v; the document lists %v", method, path, r.StatusCode(), allow, want)
				}
				continue
			}
			ps := probes[m+" "+path]
			if len(ps) == 0 {
				ps = []probe{{}}
			}
			for _, p := range ps {
				var body []byte
				if p.body != "" {
					body = []byte(p.body)
				}
				r := httpDo(t, addr, method, uri+p.query, p.headers, body)
				code := strconv.Itoa(r.StatusCode())
				if !slices.Contains(codes, code) {
					t.Errorf("%s %s%s answered %s, not documented (documented: %v); body %s", method, path, p.query, code, codes, r.Body())
				}
				if r.StatusCode() == 404 && strings.Contains(string(r.Body()), "no such path") {
					t.Errorf("%s %s: the server does not know this documented path", method, path)
				}
			}
		}
	}
}
