package server

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/valyala/fastjson"

	"github.com/busyapi/busyapi/shard"
)

// validByOracle decides with encoding/json, independently of fastjson,
// whether body is an acceptable usage. dup reports a repeated top-level key,
// which encoding/json silently resolves and busyapi refuses.
func validByOracle(body []byte) (ok, dup bool) {
	if !utf8.Valid(body) || !json.Valid(body) {
		return false, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return false, false
	}
	// Count top-level keys to find duplicates.
	var raw map[string]json.RawMessage
	_ = json.Unmarshal(body, &raw)
	type frame struct{ obj, wantKey bool }
	var stack []frame
	keys := 0
	tok := json.NewDecoder(bytes.NewReader(body))
	for {
		t, err := tok.Token()
		if err != nil {
			break
		}
		if d, isDelim := t.(json.Delim); isDelim {
			switch d {
			case '{':
				stack = append(stack, frame{obj: true, wantKey: true})
			case '[':
				stack = append(stack, frame{})
			default:
				stack = stack[:len(stack)-1]
				if n := len(stack); n > 0 && stack[n-1].obj {
					stack[n-1].wantKey = true
				}
			}
			continue
		}
		n := len(stack)
		if n > 0 && stack[n-1].obj && stack[n-1].wantKey {
			if n == 1 {
				keys++
			}
			stack[n-1].wantKey = false
			continue
		}
		if n > 0 && stack[n-1].obj {
			stack[n-1].wantKey = true
		}
	}
	dup = keys != len(raw)
	str := func(v any, maxLen int) bool {
		s, isStr := v.(string)
		return isStr && len(s) > 0 && len(s) <= maxLen
	}
	if _, has := m["id"]; has {
		return false, dup
	}
	switch v := m["patientId"].(type) {
	case json.Number:
		if _, err := strconv.ParseInt(string(v), 10, 64); err != nil {
			return false, dup
		}
	default:
		if !str(v, maxPatientID) {
			return false, dup
		}
	}
	if _, isNum := m["timestamp"].(json.Number); !isNum && !str(m["timestamp"], maxTimestamp) {
		return false, dup
	}
	if !str(m["medication"], maxMedication) {
		return false, dup
	}
	return true, dup
}

// FuzzPostUsage checks that the handler never panics, never accepts a body
// that the encoding/json oracle rejects, and always answers JSON.
func FuzzPostUsage(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte(`{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}`))
	f.Add([]byte(`{"patientId":1,"timestamp":1,"medication":"m","x":[{"y":null}]}`))
	f.Add([]byte(`{"patientId":1.5,"timestamp":"t","medication":"m"}`))
	f.Add([]byte(`{"patientId":"\ud800","timestamp":"t","medication":"m"}`))
	f.Add([]byte(`[1,2,3]`))
	f.Add([]byte(`{"id":1}`))
	f.Add([]byte("{\"patientId\":1,\"timestamp\":\"t\",\"medication\":\"\xff\"}"))
	files, _ := filepath.Glob(filepath.Join("testdata", "usages", "*.json"))
	for _, name := range files {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	s := newTestServer(f, Config{})
	f.Fuzz(func(t *testing.T, body []byte) {
		resp := call(s, "POST", "/api/usages", "application/json", body)
		ok, dup := validByOracle(body)
		switch resp.StatusCode() {
		case 201:
			if !ok || dup {
				t.Fatalf("accepted an invalid usage %q", body)
			}
			if v, err := fastjson.ParseBytes(resp.Body()); err != nil || v.GetUint64("id") == 0 {
				t.Fatalf("201 with body %q", resp.Body())
			}
		case 400:
			if ok && !dup && len(body) < 300 && !strings.Contains(string(body), `\u`) {
				t.Fatalf("rejected a valid usage %q: %s", body, resp.Body())
			}
			if v, err := fastjson.ParseBytes(resp.Body()); err != nil || len(v.GetStringBytes("error")) == 0 {
				t.Fatalf("400 with body %q", resp.Body())
			}
		default:
			t.Fatalf("status %d for %q", resp.StatusCode(), body)
		}
	})
}

// FuzzBatch: splitBatch never panics, and what it accepts is what
// encoding/json sees in the body: for a JSON array, exactly its elements;
// for NDJSON, exactly its non-blank lines (a blank last line allowed). Each
// accepted usage passes the single-usage oracle.
func FuzzBatch(f *testing.F) {
	u1 := `{"patientId":1,"timestamp":"t","medication":"m"}`
	u2 := `{"patientId":"2","timestamp":3,"medication":"m","x":[1,{"y":"]"}]}`
	for _, seed := range []string{
		"[" + u1 + "," + u2 + "]", " [ " + u1 + " ] ", "[]", "[" + u1 + ",]", "[" + u1 + " " + u2 + "]",
		"[" + u1 + "]x", `["a"]`, "[" + u1 + ",1]", "[[" + u1 + "]]", `[{"a":"\"]"}]`,
	} {
		f.Add(true, []byte(seed))
	}
	for _, seed := range []string{
		u1 + "\n" + u2 + "\n", u1 + "\r\n" + u2, u1 + "\n\n" + u2, "\n", u1 + "\n \n", u1 + " " + u2,
	} {
		f.Add(false, []byte(seed))
	}
	f.Fuzz(func(t *testing.T, array bool, body []byte) {
		format := formatNDJSON
		if array {
			format = formatArray
		}
		var p usageParser
		b := shard.GetBatch()
		defer b.Release()
		_, _, msg := splitBatch(&p, format, body, 1000, b)
		if msg != nil {
			return
		}
		var want []json.RawMessage
		if array {
			if err := json.Unmarshal(body, &want); err != nil {
				t.Fatalf("accepted an array encoding/json refuses (%v): %q", err, body)
			}
		} else {
			// A blank last line is no usage: the text after the final
			// newline, and the line before it if blank.
			lines := strings.Split(string(body), "\n")
			if lines[len(lines)-1] == "" {
				lines = lines[:len(lines)-1]
			}
			if n := len(lines); n > 0 && strings.TrimSpace(lines[n-1]) == "" {
				lines = lines[:n-1]
			}
			for _, l := range lines {
				want = append(want, json.RawMessage(l))
			}
		}
		if b.Len() != len(want) {
			t.Fatalf("accepted %d usages, encoding/json sees %d: %q", b.Len(), len(want), body)
		}
		for k, w := range want {
			got := b.Record(k)
			if !bytes.Equal(got, bytes.TrimSpace(w)) {
				t.Fatalf("usage %d is %q, encoding/json sees %q", k, got, w)
			}
			if ok, dup := validByOracle(got); !ok || dup {
				t.Fatalf("usage %d %q accepted, the oracle refuses it", k, got)
			}
		}
	})
}
