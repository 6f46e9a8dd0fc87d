// Command bare is the ingest benchmark's baseline: a plain net/http server
// that does only what no webhook receiver can skip. It reads the body (with
// the same 1 MiB cap), checks X-Signature-256 as HMAC-SHA256 of the raw body
// and answers 200 or 401. No parsing, no queue, no logging, no metrics.
//
//	bare -listen 127.0.0.1:0 -secret S
//
// It prints {"message":"listening","addr":"127.0.0.1:PORT"} on stdout, like
// receiver serve, so bench/run.sh finds both the same way.
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen address")
	secret := flag.String("secret", "", "webhook secret")
	maxBody := flag.Int64("max-body-bytes", 1<<20, "largest body accepted")
	flag.Parse()
	if *secret == "" {
		fmt.Fprintln(os.Stderr, "bare: -secret is required")
		os.Exit(2)
	}
	key := []byte(*secret)
	h := func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, *maxBody))
		if err != nil {
			http.Error(w, `{"error":"body"}`, http.StatusRequestEntityTooLarge)
			return
		}
		want, err := hex.DecodeString(strings.TrimPrefix(r.Header.Get("X-Signature-256"), "sha256="))
		m := hmac.New(sha256.New, key)
		m.Write(body)
		w.Header().Set("Content-Type", "application/json")
		if err != nil || !hmac.Equal(want, m.Sum(nil)) {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"signature"}`))
			return
		}
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bare:", err)
		os.Exit(1)
	}
	line, _ := json.Marshal(map[string]string{"message": "listening", "addr": ln.Addr().String()})
	fmt.Println(string(line))
	mux := http.NewServeMux()
	mux.HandleFunc("POST /webhooks/cvat", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second, WriteTimeout: 20 * time.Second}
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "bare:", err)
		os.Exit(1)
	}
}
