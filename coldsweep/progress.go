package coldsweep

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// progressTTL keeps a finished sweep's progress visible for a while.
const progressTTL = 30 * 24 * time.Hour

// progressKey is a Redis hash holding, per shard, the last progress of the
// sweep of a table.
func progressKey(prefix, table string) string { return prefix + ":sweep:" + table }

func pauseKey(prefix, table string) string { return prefix + ":sweep:" + table + ":paused" }

func saveProgress(ctx context.Context, rdb redis.UniversalClient, prefix string, p Progress) error {
	if rdb == nil {
		return nil
	}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	key := progressKey(prefix, p.Table)
	pipe := rdb.TxPipeline()
	pipe.HSet(ctx, key, p.Shard, b)
	pipe.Expire(ctx, key, progressTTL)
	_, err = pipe.Exec(ctx)
	return err
}

// LoadProgress returns the last progress saved by each shard of the sweep
// of table, ordered by shard. prefix is Config.Prefix ("" for the default).
func LoadProgress(ctx context.Context, rdb redis.UniversalClient, prefix, table string) ([]Progress, error) {
	if prefix == "" {
		prefix = "lazymigrate"
	}
	m, err := rdb.HGetAll(ctx, progressKey(prefix, table)).Result()
	if err != nil {
		return nil, fmt.Errorf("coldsweep: load progress of %s: %w", table, err)
	}
	out := make([]Progress, 0, len(m))
	for shard, v := range m {
		var p Progress
		if err := json.Unmarshal([]byte(v), &p); err != nil {
			return nil, fmt.Errorf("coldsweep: progress of %s shard %s: %w", table, shard, err)
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Progress) int {
		sa, _ := ParseShard(a.Shard)
		sb, _ := ParseShard(b.Shard)
		if a.Shard == b.Shard {
			return 0
		}
		if sa.N != sb.N {
			return int(sa.N - sb.N)
		}
		return int(sa.I - sb.I)
	})
	return out, nil
}

// SetPaused sets or clears the pause flag of table's sweep: every sweeper
// of the table following the same Redis holds after its chunks in flight
// while it is set. prefix is Config.Prefix ("" for the default).
func SetPaused(ctx context.Context, rdb redis.UniversalClient, prefix, table string, paused bool) error {
	if rdb == nil {
		return errors.New("coldsweep: pausing a sweep needs Config.Redis")
	}
	if prefix == "" {
		prefix = "lazymigrate"
	}
	var err error
	if paused {
		err = rdb.Set(ctx, pauseKey(prefix, table), time.Now().UTC().Format(time.RFC3339), 0).Err()
	} else {
		err = rdb.Del(ctx, pauseKey(prefix, table)).Err()
	}
	if err != nil {
		return fmt.Errorf("coldsweep: pause flag of %s: %w", table, err)
	}
	return nil
}

// IsPaused reports whether table's sweep is paused.
func IsPaused(ctx context.Context, rdb redis.UniversalClient, prefix, table string) (bool, error) {
	if rdb == nil {
		return false, errors.New("coldsweep: reading the pause flag needs a Redis client")
	}
	if prefix == "" {
		prefix = "lazymigrate"
	}
	n, err := rdb.Exists(ctx, pauseKey(prefix, table)).Result()
	if err != nil {
		return false, fmt.Errorf("coldsweep: pause flag of %s: %w", table, err)
	}
	return n > 0, nil
}
