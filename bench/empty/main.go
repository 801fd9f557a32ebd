// Command empty is the "empty fasthttp handler" baseline for busyapi's
// benchmarks: it answers every request 200 with an empty body, so it
// measures fasthttp's own cost of parsing a request and writing a response.
package main

import (
	"flag"
	"log"

	"github.com/valyala/fasthttp"
)

func main() {
	addr := flag.String("addr", ":8081", "listen address HOST:PORT")
	flag.Parse()
	s := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {},
		Name:    "empty",
	}
	log.Printf("empty fasthttp server listening on %s", *addr)
	if err := s.ListenAndServe(*addr); err != nil {
		log.Fatal(err)
	}
}
