package main

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lazymigrate/lazymigrate/internal/testenv"
)

func scrape(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v\n%s", url, resp.StatusCode, err, body)
	}
	return string(body)
}

// TestPauseAndMetrics starts a sweep while the table's sweep is paused: it
// holds, status says so, --metrics-addr serves its metrics meanwhile, and
// 'sweeper resume' lets it finish.
func TestPauseAndMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t, 5_000)
	// No sweep has reported yet: --force.
	if r := b.sweeper(t, "pause", "--force"); r.code != 0 || !strings.Contains(r.stdout, "paused the sweep of accounts") {
		t.Fatalf("pause: %v", r)
	}
	stderr, wait := background(b.args("run", "--metrics-addr", "127.0.0.1:0", "--interval", "100ms", "--json")...)
	var url string
	testenv.Eventually(t, 30*time.Second, "the metrics URL in the log", func() bool {
		m := regexp.MustCompile(`url=(http://\S+/metrics)`).FindStringSubmatch(stderr.String())
		if m != nil {
			url = m[1]
		}
		return m != nil
	})
	testenv.Eventually(t, 30*time.Second, "status shows the sweep held", func() bool {
		st := b.status(t)
		return st.Paused && len(st.Shards) == 1 && st.Shards[0].State == "held"
	})
	if r := b.sweeper(t, "status"); !strings.Contains(r.stdout, "paused     yes") || !strings.Contains(r.stdout, "held: paused") {
		t.Errorf("status: %v", r)
	}
	body := scrape(t, url)
	for _, want := range []string{
		`lazymigrate_sweep_throttled{table="accounts"} 1`,
		`lazymigrate_sweep_chunks{table="accounts"} 1`,
		`lazymigrate_sweep_chunks_done{table="accounts"} 0`,
		`lazymigrate_tracker_settled_keys{table="accounts"} 0`,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}

	if r := b.sweeper(t, "resume"); r.code != 0 || !strings.Contains(r.stdout, "resumed the sweep of accounts") {
		t.Fatalf("resume: %v", r)
	}
	r := wait()
	sum := decode[runOut](t, r)
	if r.code != 0 || sum.Outcome != "done" || sum.ThrottledSeconds <= 0 {
		t.Errorf("run: want done after being held: %v", r)
	}
	if !strings.Contains(r.stderr, "progress: accounts: 0/1 chunks (0.0%)") || !strings.Contains(r.stderr, "held: paused") {
		t.Errorf("no plain progress line while held:\n%s", r.stderr)
	}
	if st := b.status(t); st.Paused || st.Percent != 100 || st.Shards[0].State != "done" {
		t.Errorf("status after the sweep: %+v", st)
	}
	if r := b.sweeper(t, "resume"); r.code != 0 || !strings.Contains(r.stdout, "was not paused") {
		t.Errorf("resume again: %v", r)
	}
}

// pushgateway is an httptest server that records what is pushed to it.
type pushgateway struct {
	*httptest.Server
	mu     sync.Mutex
	pushes []pushRecord
}

type pushRecord struct {
	method, path string
	body         []byte
}

func newPushgateway(t *testing.T) *pushgateway {
	pg := &pushgateway{}
	pg.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		pg.mu.Lock()
		pg.pushes = append(pg.pushes, pushRecord{r.Method, r.URL.EscapedPath(), body})
		pg.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(pg.Close)
	return pg
}

func (pg *pushgateway) got() []pushRecord {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	return append([]pushRecord(nil), pg.pushes...)
}

// TestPushgateway: a sweep pushes its metrics every --push-interval while it
// runs (here, while it is held) and once at the end, under job
// lazymigrate_sweeper grouped by table and shard.
func TestPushgateway(t *testing.T) {
	t.Parallel()
	pg := newPushgateway(t)
	b := setup(t, 3_000)
	if r := b.sweeper(t, "pause", "--force"); r.code != 0 {
		t.Fatalf("pause: %v", r)
	}
	stderr, wait := background(b.args("run", "--pushgateway", pg.URL, "--push-interval", "20ms", "--shard", "0/1", "--quiet")...)
	testenv.Eventually(t, 30*time.Second, "two periodic pushes", func() bool { return len(pg.got()) >= 2 })
	if r := b.sweeper(t, "resume"); r.code != 0 {
		t.Fatalf("resume: %v", r)
	}
	if r := wait(); r.code != 0 || r.stderr != "" {
		t.Fatalf("run: want success and no warning: %v", r)
	}
	if strings.Contains(stderr.String(), "cannot push") {
		t.Errorf("a push failed:\n%s", stderr.String())
	}

	pushes := pg.got()
	wantPath := "/metrics/job/lazymigrate_sweeper/"
	shard := "shard@base64/" + base64.RawURLEncoding.EncodeToString([]byte("0/1"))
	for _, p := range pushes {
		if p.method != http.MethodPost || !strings.HasPrefix(p.path, wantPath) ||
			!strings.Contains(p.path, "/table/accounts") || !strings.Contains(p.path, shard) {
			t.Errorf("push %s %s: want POST %s.../table/accounts/%s", p.method, p.path, wantPath, shard)
		}
		if !strings.Contains(string(p.body), "lazymigrate_sweep_progress_ratio") {
			t.Errorf("push %s lacks lazymigrate_sweep_progress_ratio", p.path)
		}
	}
	last := pushes[len(pushes)-1]
	for _, want := range []string{"lazymigrate_sweep_rows_total", "lazymigrate_sweep_last_success_timestamp_seconds"} {
		if !strings.Contains(string(last.body), want) {
			t.Errorf("the final push lacks %s", want)
		}
	}
	if strings.Contains(string(pushes[0].body), "lazymigrate_sweep_last_success_timestamp_seconds") {
		t.Errorf("a push before the end has a last success time")
	}
}

// A Pushgateway behind basic auth is given as http://user:pass@host. The
// credentials go as basic auth, and the warning logged when a push fails
// (client_golang's error quotes the URL) does not hold the password.
func TestPushErrorsHideThePassword(t *testing.T) {
	t.Parallel()
	const secret = "s3cretpw"
	var (
		mu    sync.Mutex
		auths []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, _ := r.BasicAuth()
		mu.Lock()
		auths = append(auths, user+":"+pass)
		mu.Unlock()
		http.Error(w, "bad gateway", http.StatusBadGateway)
	}))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword("admin", secret)
	b := setup(t, 500)
	r := b.sweeper(t, "run", "--pushgateway", u.String(), "--progress", "none")
	if r.code != 0 {
		t.Fatalf("run: %v", r)
	}
	if !strings.Contains(r.stderr, "cannot push") || !strings.Contains(r.stderr, "while pushing to http://"+u.Host+"/metrics/job/") {
		t.Fatalf("no push warning naming the Pushgateway: %v", r)
	}
	if strings.Contains(r.stderr, secret) {
		t.Errorf("the Pushgateway password is logged:\n%s", r.stderr)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(auths) == 0 || auths[0] != "admin:"+secret {
		t.Errorf("pushes sent basic auth %q, want admin:%s", auths, secret)
	}
}
