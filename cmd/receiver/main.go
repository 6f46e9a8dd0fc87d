// Command receiver is cvat-sync: it receives CVAT's signed webhooks and keeps
// Cloud Storage and Pub/Sub in step with CVAT's annotations.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, stdio{in: os.Stdin, out: os.Stdout, err: os.Stderr}); err != nil {
		fmt.Fprintln(os.Stderr, "receiver:", err)
		os.Exit(exitCode(err))
	}
}
