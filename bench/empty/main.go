// Command empty is the "empty fasthttp handler" baseline for busyapi's
// benchmarks: it answers every request 200 with an empty body, so it
// measures fasthttp's own cost of parsing a request and writing a response.
package main

import (
	"flag"
	"log"
	"time"

	"github.com/valyala/fasthttp"
)

func main() {
	addr := flag.String("addr", ":8081", "listen address HOST:PORT")
	timeouts := flag.Bool("timeouts", false, "set busyapi's default read, write and idle timeouts (10s, 10s, 60s)")
	created := flag.Bool("created", false, "answer what busyapi answers a POST: 201 with Location, Content-Type and {\"id\":N}, from constants")
	flag.Parse()
	s := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {},
		Name:    "empty",
	}
	if *created {
		// The response the busyapi contract requires, at no cost of
		// producing it: the ceiling for a server that must answer it.
		loc, ct, body := []byte("/api/usages/1234567"), []byte("application/json"), []byte(`{"id":1234567}`)
		s.Handler = func(ctx *fasthttp.RequestCtx) {
			ctx.Response.Header.SetBytesKV([]byte("Location"), loc)
			ctx.SetStatusCode(fasthttp.StatusCreated)
			ctx.Response.Header.SetContentTypeBytes(ct)
			ctx.Response.SetBody(body)
		}
		s.Name = "busyapi"
	}
	if *timeouts {
		// The same server settings as busyapi, so that a ratio against
		// this baseline measures the handler and the pipeline behind it,
		// not fasthttp's per-request deadline updates.
		s.ReadTimeout, s.WriteTimeout, s.IdleTimeout = 10*time.Second, 10*time.Second, 60*time.Second
	}
	log.Printf("empty fasthttp server listening on %s", *addr)
	if err := s.ListenAndServe(*addr); err != nil {
		log.Fatal(err)
	}
}
