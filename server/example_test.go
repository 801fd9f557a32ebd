package server_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/busyapi/busyapi/server"
)

// A program embeds busyapi as a sidecar: New, Serve on its own listener
// (a unix socket works the same way), Shutdown when it is done.
func Example() {
	srv, err := server.New(server.Config{})
	if err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() { _ = srv.Serve(ln) }()

	url := "http://" + ln.Addr().String() + "/api/usages"
	resp, err := http.Post(url, "application/json",
		strings.NewReader(`{"patientId":100,"timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}`))
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, string(body), resp.Header.Get("Location"))

	// Shutdown drains the rings into the store.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		panic(err)
	}
	// Output:
	// 201 {"id":1} /api/usages/1
}

// A program with its own fasthttp.Server mounts the API's Handler and
// ErrorHandler under its own routing.
func ExampleServer_Handler() {
	api, err := server.New(server.Config{MaxBodyBytes: 4 << 10, FlushInterval: time.Millisecond})
	if err != nil {
		panic(err)
	}
	defer api.Shutdown(context.Background())
	s := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			if string(ctx.Path()) == "/version" {
				ctx.SetBodyString("my-app 1.0")
				return
			}
			api.Handler(ctx)
		},
		ErrorHandler:       api.ErrorHandler,
		MaxRequestBodySize: api.Config().MaxBodyBytes,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() { _ = s.Serve(ln) }()
	defer s.Shutdown()

	base := "http://" + ln.Addr().String()
	resp, err := http.Post(base+"/api/usages", "application/json",
		strings.NewReader(`{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}`))
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	time.Sleep(50 * time.Millisecond) // the drainer stores it within FlushInterval
	resp, err = http.Get(base + "/api/usages/1")
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, string(body))
	// Output:
	// 200 {"id":1,"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}
}
