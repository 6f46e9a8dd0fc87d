package inbox

import (
	"fmt"
	"time"

	"cloud.google.com/go/pubsub/v2"
)

// Timing of the inbox. The invariants between these values are checked by
// checkTiming (and its test), so changing one without the others fails.
const (
	// CVATDeliveryTimeout is how long CVAT waits for an answer to a webhook
	// delivery (10 s on every release; connect 3 s from 2.71).
	CVATDeliveryTimeout = 10 * time.Second
	// PublishTimeout bounds one enqueue. It is shorter than the ingress's
	// wait for it (HandlerTimeout), so a failed publish has resumed its
	// ordering key before the handler answers 503 and CVAT's retry is not
	// refused as "paused".
	PublishTimeout = 6 * time.Second
	// HandlerTimeout is the longest the ingress waits for an enqueue: below
	// CVAT's own timeout, so CVAT sees our 503 rather than a timeout.
	HandlerTimeout = 8 * time.Second

	// AckDeadline is the subscription's ack deadline: how long a message a
	// crashed replica held stays hidden before it is redelivered.
	AckDeadline = 20 * time.Second
	// LeaseStep bounds each lease extension the worker's client asks for, so
	// a replica that dies holding work hides it for at most about a minute.
	LeaseStep = time.Minute
	// minLeaseStep is the shortest extension asked for.
	minLeaseStep = 10 * time.Second

	// RedeliveryMin and RedeliveryMax are the subscription's backoff between
	// redeliveries of a nacked message (Pub/Sub allows 0 s to 600 s).
	RedeliveryMin = 10 * time.Second
	RedeliveryMax = 10 * time.Minute
)

// checkTiming reports a broken invariant between the constants above.
func checkTiming() error {
	switch {
	case !(PublishTimeout < HandlerTimeout && HandlerTimeout < CVATDeliveryTimeout):
		return fmt.Errorf("inbox: want PublishTimeout %s < HandlerTimeout %s < CVATDeliveryTimeout %s", PublishTimeout, HandlerTimeout, CVATDeliveryTimeout)
	case !(minLeaseStep <= AckDeadline && AckDeadline <= LeaseStep && LeaseStep <= time.Minute):
		return fmt.Errorf("inbox: want minLeaseStep %s <= AckDeadline %s <= LeaseStep %s <= 1m", minLeaseStep, AckDeadline, LeaseStep)
	case !(0 <= RedeliveryMin && RedeliveryMin <= RedeliveryMax && RedeliveryMax <= 10*time.Minute):
		return fmt.Errorf("inbox: redelivery backoff %s..%s outside Pub/Sub's 0s..10m", RedeliveryMin, RedeliveryMax)
	}
	return nil
}

// SubscriptionSettings are the inbox subscription's settings, as the service
// creates it on the embedded default and on emulators (and as docs/deploy.md
// tells to create it on GCP).
type SubscriptionSettings struct {
	AckDeadline     time.Duration
	Ordering        bool
	DeadLetterTopic string
	// MaxDeliveryAttempts is Pub/Sub's own dead-letter limit: the backstop
	// for messages that crash replicas. Shutdown nacks spend deliveries too,
	// so it allows more than the worker's attempts.
	MaxDeliveryAttempts int
	MinBackoff          time.Duration
	MaxBackoff          time.Duration
}

// Subscription returns the inbox subscription's settings for a worker that
// makes workerAttempts attempts before it gives a state up to convergence.
func Subscription(deadLetterTopic string, workerAttempts int) (SubscriptionSettings, error) {
	if err := checkTiming(); err != nil {
		return SubscriptionSettings{}, err
	}
	if workerAttempts < 1 {
		return SubscriptionSettings{}, fmt.Errorf("inbox: worker attempts %d, want at least 1", workerAttempts)
	}
	return SubscriptionSettings{
		AckDeadline: AckDeadline, Ordering: true, DeadLetterTopic: deadLetterTopic,
		// Pub/Sub accepts 5 to 100.
		MaxDeliveryAttempts: min(max(4*workerAttempts, 20), 100),
		MinBackoff:          RedeliveryMin, MaxBackoff: RedeliveryMax,
	}, nil
}

// leaseSettings sets the worker's receive settings: held messages wait for
// their export (possibly through an outage of CVAT, GCS or Pub/Sub), so it
// allows bursts far larger than the client's default 1000 outstanding
// messages and holds them up to hold in all, in extensions of at most
// LeaseStep.
func leaseSettings(rs *pubsub.ReceiveSettings, hold time.Duration) {
	rs.MaxOutstandingMessages = 50000
	rs.MaxOutstandingBytes = 256 << 20
	rs.MaxDurationPerAckExtension = LeaseStep
	rs.MinDurationPerAckExtension = minLeaseStep
	rs.MaxExtension = hold
}
