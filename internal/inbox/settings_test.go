package inbox

import (
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
)

func TestTimingInvariants(t *testing.T) {
	if err := checkTiming(); err != nil {
		t.Fatal(err)
	}
}

func TestSubscriptionSettings(t *testing.T) {
	for _, tc := range []struct{ attempts, want int }{{1, 20}, {5, 20}, {10, 40}, {50, 100}} {
		s, err := Subscription("dead", tc.attempts)
		if err != nil {
			t.Fatal(err)
		}
		if s.MaxDeliveryAttempts != tc.want || !s.Ordering || s.DeadLetterTopic != "dead" {
			t.Errorf("attempts %d: %+v, want MaxDeliveryAttempts %d", tc.attempts, s, tc.want)
		}
	}
	if _, err := Subscription("dead", 0); err == nil {
		t.Error("0 worker attempts accepted")
	}
}

func TestLeaseStepAtMostAMinute(t *testing.T) {
	var rs pubsub.ReceiveSettings
	leaseSettings(&rs, 3*time.Hour)
	if rs.MaxDurationPerAckExtension > time.Minute || rs.MaxDurationPerAckExtension < rs.MinDurationPerAckExtension {
		t.Errorf("lease extensions %s..%s", rs.MinDurationPerAckExtension, rs.MaxDurationPerAckExtension)
	}
	if rs.MaxExtension != 3*time.Hour {
		t.Errorf("MaxExtension %s", rs.MaxExtension)
	}
}
