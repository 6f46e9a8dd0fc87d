package cvatapi_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cvat-sync/cvat-sync/internal/cvatapi"
	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
)

// Issue 14 #5: Bearer exists only from 2.48; before, a Bearer header makes
// the request anonymous (401). The default ("auto") sends a token the way
// the server's version takes it.
func TestAuthAutoByVersion(t *testing.T) {
	tests := []struct{ version, want string }{
		{"2.3.0", "token"}, {"2.16.0", "token"}, {"2.17.0", "token"}, {"2.47.0", "token"},
		{"2.48.0", "bearer"}, {"2.64.0", "bearer"}, {"2.73.0", "bearer"},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			_, task, _ := seed(f)
			c, err := cvatapi.New(cvatapi.Config{BaseURL: f.URL(), Token: f.Token()}) // defaults, as the service is configured
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Task(context.Background(), task.ID); err != nil {
				t.Fatal(err)
			}
			if err := c.CheckAuth(context.Background()); err != nil {
				t.Fatal(err)
			}
			for _, call := range f.CallsTo("GET", "/api/tasks/{id}") {
				if call.Auth != tt.want {
					t.Errorf("sent %q, want %q", call.Auth, tt.want)
				}
			}
		})
	}
}

// Issue 14 #5: refused credentials are named as such (which setting, which
// scheme, and a hint), never as "CVAT not reachable", never with the
// credential.
func TestCheckAuth(t *testing.T) {
	tests := []struct {
		name    string
		version string
		cfg     func(*cvatapi.Config, *cvatfake.Server)
		want    []string
	}{
		{"bearer forced before 2.48", "2.40.0", func(c *cvatapi.Config, f *cvatfake.Server) { c.AuthScheme = "bearer" },
			[]string{`Config.Token sent as "Bearer" (AuthScheme bearer)`, "2.48", "Authentication credentials were not provided."}},
		{"token forced on 2.64 with a wrong key", "2.64.0", func(c *cvatapi.Config, f *cvatfake.Server) { c.AuthScheme, c.Token = "token", "s3cret-wrong" },
			[]string{`Config.Token sent as "Token" (AuthScheme token)`, "Invalid token.", "AuthScheme bearer or auto"}},
		{"wrong token, auto", "2.64.0", func(c *cvatapi.Config, f *cvatfake.Server) { c.Token = "s3cret-wrong" },
			[]string{`Config.Token sent as "Bearer" (AuthScheme auto, CVAT 2.64.0)`, "Invalid token."}},
		{"wrong token, auto, old", "2.10.0", func(c *cvatapi.Config, f *cvatfake.Server) { c.Token = "s3cret-wrong" },
			[]string{`Config.Token sent as "Token" (AuthScheme auto, CVAT 2.10.0)`}},
		{"wrong password", "2.64.0", func(c *cvatapi.Config, f *cvatfake.Server) {
			c.Token, c.Username, c.Password = "", "user7", "s3cret-wrong"
		},
			[]string{`Config.Username/Password sent as "Basic"`, "Invalid username/password."}},
		{"none", "2.64.0", func(c *cvatapi.Config, f *cvatfake.Server) { c.Token = "" }, []string{"none configured"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			c := newClient(t, f, func(c *cvatapi.Config) { tt.cfg(c, f) })
			err := c.CheckAuth(context.Background())
			if !errors.Is(err, cvatapi.ErrUnauthorized) || errors.Is(err, cvatapi.ErrUnavailable) {
				t.Fatalf("err = %v; want ErrUnauthorized", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %q\nwant it to say %s", err, w)
				}
			}
			if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), f.Token()) {
				t.Errorf("error leaks a credential: %v", err)
			}
		})
	}
}

// Issue 14 #11: 2.3-2.16 log every Token-authenticated request without a
// session in (a server-side session and Set-Cookie each time); the client
// keeps the cookie, so there is one session, and its POSTs still pass
// (the Token header is checked before the session and its CSRF rule).
func TestTokenSessionsKeepCookie(t *testing.T) {
	tests := []struct {
		version string
		want    int
	}{{"2.3.0", 1}, {"2.10.0", 1}, {"2.15.0", 1}, {"2.16.0", 1}, {"2.16.3", 1}, {"2.17.0", 0}, {"2.64.0", 0}}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: tt.version})
			_, task, _ := seed(f)
			c := newClient(t, f, func(c *cvatapi.Config) { c.AuthScheme = "token" })
			for range 3 {
				if _, err := c.Task(context.Background(), task.ID); err != nil {
					t.Fatal(err)
				}
			}
			x, err := c.ExportTask(context.Background(), task.ID, coco, cvatapi.ExportOptions{})
			if err != nil {
				t.Fatal(err)
			}
			x.Body.Close()
			if got := f.Sessions(); got != tt.want {
				t.Errorf("%d server sessions, want %d", got, tt.want)
			}
		})
	}
}

// A proxy that wants its own credentials answers even the open about with
// 401: an error, not a hang (the version lookup of the 401's hint must not
// wait for itself).
func TestUnauthorizedAbout(t *testing.T) {
	f := cvatfake.New(t, cvatfake.Options{})
	f.Inject(cvatfake.Fault{Route: "/api/server/about", Status: 401, ContentType: "text/html", Body: "<html>proxy login</html>"})
	c := newClient(t, f)
	_, err := c.Task(context.Background(), 1)
	if !errors.Is(err, cvatapi.ErrUnauthorized) || !strings.Contains(err.Error(), "GET /api/server/about: 401") {
		t.Fatalf("err = %v", err)
	}
}
