// Command nethttp is the net/http + encoding/json baseline for busyapi's
// benchmarks. It serves the same API as busyapi, written the plain way:
//
//	POST /api/usages       validates the JSON body, stores it, answers
//	                       201 {"id":N} with Location: /api/usages/N
//	GET  /api/usages/{id}  answers the stored usage with its id, or 404
//
// Usages are kept in a sync.Map and never evicted, so memory grows with the
// number of requests; it is a baseline for benchmarks, not a server.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log"
	"mime"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

const maxBody = 16 << 10

// usage is what a POST body must contain. The fields are kept raw so their
// JSON types can be checked: patientId an integer or a string, timestamp a
// number or a string, medication a string.
type usage struct {
	ID         json.RawMessage `json:"id"`
	PatientID  json.RawMessage `json:"patientId"`
	Timestamp  json.RawMessage `json:"timestamp"`
	Medication json.RawMessage `json:"medication"`
}

type store struct {
	next  atomic.Uint64
	items sync.Map // uint64 -> []byte, the body as posted
}

func main() {
	addr := flag.String("addr", ":8082", "listen address HOST:PORT")
	flag.Parse()
	st := &store{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/usages", st.post)
	mux.HandleFunc("GET /api/usages/{id}", st.get)
	srv := &http.Server{
		Addr:              *addr,
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	log.Printf("net/http baseline listening on %s", *addr)
	log.Fatal(srv.ListenAndServe())
}

func (st *store) post(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			jsonError(w, http.StatusUnsupportedMediaType, "unsupported Content-Type: send application/json")
			return
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			jsonError(w, http.StatusRequestEntityTooLarge, "request body is too large")
			return
		}
		jsonError(w, http.StatusBadRequest, "cannot read request body")
		return
	}
	body = bytes.TrimSpace(body)
	if msg := validate(body); msg != "" {
		jsonError(w, http.StatusBadRequest, msg)
		return
	}
	id := st.next.Add(1)
	st.items.Store(id, body)
	w.Header().Set("Location", "/api/usages/"+strconv.FormatUint(id, 10))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	out, _ := json.Marshal(struct {
		ID uint64 `json:"id"`
	}{id})
	_, _ = w.Write(out)
}

// validate checks that body is one JSON object with the required fields of
// the right types. It returns "" if it is, or the reason it is not.
func validate(body []byte) string {
	if len(body) == 0 {
		return "request body is empty"
	}
	if !utf8.Valid(body) {
		return "request body is not valid UTF-8"
	}
	if body[0] != '{' {
		return "request body must be a JSON object"
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var u usage
	if err := dec.Decode(&u); err != nil {
		return "request body is not valid JSON: " + err.Error()
	}
	if _, err := dec.Token(); err != io.EOF {
		return "request body has data after the JSON object"
	}
	if u.ID != nil {
		return "field id must not be sent: the server assigns ids"
	}
	if msg := checkField("patientId", u.PatientID, 64, true, false); msg != "" {
		return msg
	}
	if msg := checkField("timestamp", u.Timestamp, 64, false, true); msg != "" {
		return msg
	}
	return checkField("medication", u.Medication, 128, false, false)
}

// checkField checks a required field: a non-empty string of at most maxLen
// bytes, or, if allowed, an integer or any number.
func checkField(name string, raw json.RawMessage, maxLen int, integer, number bool) string {
	if raw == nil || string(raw) == "null" {
		return "field " + name + " is required"
	}
	if raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) != nil || s == "" || len(s) > maxLen {
			return "field " + name + " must be a non-empty string of at most " + strconv.Itoa(maxLen) + " bytes"
		}
		return ""
	}
	switch {
	case integer:
		if _, err := strconv.ParseInt(string(raw), 10, 64); err != nil {
			return "field " + name + " must be an integer or a string"
		}
	case number:
		if _, err := strconv.ParseFloat(string(raw), 64); err != nil {
			return "field " + name + " must be a number or a string"
		}
	default:
		return "field " + name + " must be a string"
	}
	return ""
}

func (st *store) get(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		jsonError(w, http.StatusBadRequest, "usage id must be a positive decimal integer")
		return
	}
	v, ok := st.items.Load(id)
	if !ok {
		jsonError(w, http.StatusNotFound, "no usage with this id")
		return
	}
	body := v.([]byte)
	out := make([]byte, 0, len(body)+24)
	out = append(out, `{"id":`...)
	out = strconv.AppendUint(out, id, 10)
	if len(body) > 2 {
		out = append(out, ',')
	}
	out = append(out, body[1:]...)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

func jsonError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	out, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{msg})
	_, _ = w.Write(out)
}
