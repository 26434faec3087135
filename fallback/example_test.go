package fallback_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/lazymigrate/lazymigrate/fallback"
	"github.com/lazymigrate/lazymigrate/internal/exampledb"
)

// A rollback: an operator's tool sets the mode of "accounts" to old, and a
// service process, polling with Run, follows.
func Example() {
	ctx := context.Background()
	rdb := exampledb.Redis()
	defer rdb.Close()

	// A prefix of its own keeps concurrent runs of this example apart.
	prefix := fmt.Sprintf("lmexample:%d", time.Now().UnixNano())
	defer rdb.Del(ctx, prefix+":mode:accounts")
	cfg := &fallback.Config{Prefix: prefix, PollInterval: 10 * time.Millisecond}

	// The service reads the mode once before serving, then polls.
	service, err := fallback.New(rdb, "accounts", cfg)
	if err != nil {
		log.Fatal(err)
	}
	if err := service.Refresh(ctx); err != nil {
		log.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- service.Run(runCtx) }()
	fmt.Println("service reads in mode:", service.Mode())

	// The operator rolls back (redis-cli SET <prefix>:mode:accounts old
	// does the same).
	cli, err := fallback.New(rdb, "accounts", cfg)
	if err != nil {
		log.Fatal(err)
	}
	if err := cli.Set(ctx, fallback.ModeOld); err != nil {
		log.Fatal(err)
	}

	// The service follows within its PollInterval.
	for service.Mode() != fallback.ModeOld {
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Println("service reads in mode:", service.Mode())

	stop()
	if err := <-done; err != nil {
		log.Fatal(err)
	}

	// Output:
	// service reads in mode: readthrough
	// service reads in mode: old
}

// An override pins one process's mode, whatever Redis says; a switch made
// without Redis follows only its Default and overrides, which suits tests.
func ExampleSwitch_Override() {
	sw, err := fallback.New(nil, "accounts", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(sw.Mode())
	sw.Override(fallback.ModeOld)
	fmt.Println(sw.Mode())
	sw.ClearOverride()
	fmt.Println(sw.Mode())

	// Output:
	// readthrough
	// old
	// readthrough
}

func ExampleParseMode() {
	m, err := fallback.ParseMode("old")
	fmt.Println(m, err)
	_, err = fallback.ParseMode("rollback")
	fmt.Println(err)

	// Output:
	// old <nil>
	// fallback: invalid mode "rollback"; valid modes are old, readthrough and new
}

// A rollout: readthrough for 5% of the keys, old for the rest. Each key's
// place is fixed, so raising the percentage only adds keys.
func ExamplePolicy_ModeOf() {
	p, err := fallback.ParsePolicy("readthrough 5%")
	if err != nil {
		log.Fatal(err)
	}
	counts := map[fallback.Mode]int{}
	for key := range int64(10_000) {
		counts[p.ModeOf(key)]++
	}
	fmt.Println(p, "- keys 0-9999 in readthrough:", counts[fallback.ModeReadthrough], "in old:", counts[fallback.ModeOld])

	wider := fallback.Policy{Mode: fallback.ModeReadthrough, Percent: 20}
	stayed := true
	for key := range int64(10_000) {
		if p.ModeOf(key) == fallback.ModeReadthrough && wider.ModeOf(key) != fallback.ModeReadthrough {
			stayed = false
		}
	}
	fmt.Println("every key at 5% is still in at 20%:", stayed)

	// Output:
	// readthrough 5% - keys 0-9999 in readthrough: 504 in old: 9496
	// every key at 5% is still in at 20%: true
}

// A shadow comparison: a sample of reads is compared with the database that
// did not serve them, in the background. Here every read is sampled, and
// the check finds OLD behind NEW, twice, so the difference is reported.
func ExampleShadow() {
	noTime := func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	sh, err := fallback.NewShadow("accounts", &fallback.ShadowConfig{
		Rate:         1,
		RecheckDelay: time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{ReplaceAttr: noTime})),
	})
	if err != nil {
		log.Fatal(err)
	}

	// In the read path, after NEW served key 42:
	if sh.Sample() {
		sh.Compare(context.Background(), 42, fallback.ModeNew, func(ctx context.Context) (string, error) {
			// Read the key from NEW and from OLD, and compare.
			return "fields differ: Balance", nil
		})
	}
	sh.Close() // at shutdown

	// Output:
	// level=WARN msg="lazymigrate: shadow read differs" table=accounts key=42 served_by=new difference="fields differ: Balance"
}
