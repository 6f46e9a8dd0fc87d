package webhook

import (
	"encoding/json"
	"testing"
)

// jsonAnswer is the struct the answers were encoded from before
// appendAnswer, the reference for its output.
type jsonAnswer struct {
	Status    string `json:"status,omitempty"`
	Event     string `json:"event,omitempty"`
	TaskID    int64  `json:"task_id,omitempty"`
	RequestID string `json:"request_id,omitempty"`
	Error     string `json:"error,omitempty"`
}

func checkAnswer(t *testing.T, a answer) {
	t.Helper()
	want, err := json.Marshal(jsonAnswer{a.status, a.event, a.taskID, a.requestID, a.err})
	if err != nil {
		t.Fatal(err)
	}
	if got := appendAnswer(nil, a); string(got) != string(want) {
		t.Errorf("appendAnswer = %s, encoding/json = %s", got, want)
	}
}

func TestAppendAnswer(t *testing.T) {
	for _, a := range []answer{
		{},
		{status: "pong", event: "ping", requestID: "0a1b2c3d-1"},
		{status: "stored", event: "update:job", taskID: 9, requestID: "r"},
		{err: `task.id: is a string, want a positive integer`, requestID: "r"},
		{err: "quote \" backslash \\ <html> & \n\t\r\b\f \x00 \x1f \u2028 \u2029 \xff\xfe é 😀"},
		{event: "completed:request[export:dataset]", taskID: -1},
	} {
		checkAnswer(t, a)
	}
}

func FuzzAppendString(f *testing.F) {
	f.Add("update:task", int64(9))
	f.Add("<\xff\u2028\"\\\x00", int64(-3))
	f.Fuzz(func(t *testing.T, s string, id int64) {
		checkAnswer(t, answer{status: s, event: s, taskID: id, requestID: s, err: s})
	})
}
