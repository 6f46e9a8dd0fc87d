package main

import (
	"context"
	"errors"
	"io"
)

// TODO(issue 4, 5, 6): these commands are wired once their packages land.
var errNotYet = errors.New("not implemented in this build")

func backfill(context.Context, []string, func(string) string, io.Writer) error { return errNotYet }
func webhookRegister(context.Context, []string, func(string) string, io.Writer) error {
	return errNotYet
}
func webhookPing(context.Context, []string, func(string) string, io.Writer) error { return errNotYet }
func outboxTail(context.Context, []string, func(string) string, io.Writer) error  { return errNotYet }
