// Package metrics is the one way cvat-sync's packages register their
// Prometheus collectors: on the registerer they are handed (never the global
// default), sharing the collector already registered under the same name
// when two components of one process (two CVAT clients, say) register it.
package metrics

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c on reg and returns the collector to use: c, or the
// one already registered under the same description, so that counts of
// several components add up in one series instead of being lost in an
// unregistered copy. A nil reg leaves c unregistered (a command or a test
// that serves no metrics). A clash of a name with a different description
// is an error.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		return c, nil
	}
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("register metrics: %w", err)
}

// Registrar registers several collectors and remembers the first error, so a
// constructor registers all of its metrics and checks once.
type Registrar struct {
	Reg prometheus.Registerer
	Err error
}

// Must is Register that records the error in r instead of returning it.
func Must[C prometheus.Collector](r *Registrar, c C) C {
	got, err := Register(r.Reg, c)
	if err != nil && r.Err == nil {
		r.Err = err
	}
	return got
}
