package promote

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/hibiken/asynq"

	"github.com/lazymigrate/lazymigrate/internal/keys"
)

// TaskType is the asynq task type of promotion tasks. Register a Handler for
// it on the worker's asynq.ServeMux.
const TaskType = "lazymigrate:promote"

// MaxTaskKeys bounds the keys one task may carry.
const MaxTaskKeys = 10_000

// ErrBadPayload marks a task payload that can never succeed. It also wraps
// asynq.SkipRetry, so asynq archives the task at once instead of retrying.
var ErrBadPayload = errors.New("promote: malformed task payload")

// Payload is what a promotion task carries: keys of one table to copy.
type Payload struct {
	// Table is the Copier's table name.
	Table string `json:"table"`
	// Keys to promote, each >= 0.
	Keys []int64 `json:"keys"`
}

// NewTask returns a promotion task for keys of table.
func NewTask(table string, ks []int64, opts ...asynq.Option) (*asynq.Task, error) {
	p := Payload{Table: table, Keys: ks}
	if err := p.validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("promote: encode task: %w", err)
	}
	return asynq.NewTask(TaskType, b, opts...), nil
}

// DecodePayload parses and validates a promotion task's payload. Errors wrap
// ErrBadPayload and asynq.SkipRetry.
func DecodePayload(b []byte) (Payload, error) {
	var p Payload
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Payload{}, badPayload("%v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Payload{}, badPayload("trailing data after the JSON object")
	}
	if err := p.validate(); err != nil {
		return Payload{}, err
	}
	return p, nil
}

func (p Payload) validate() error {
	switch {
	case p.Table == "":
		return badPayload("no table")
	case len(p.Keys) == 0:
		return badPayload("no keys")
	case len(p.Keys) > MaxTaskKeys:
		return badPayload("%d keys, more than MaxTaskKeys (%d)", len(p.Keys), MaxTaskKeys)
	}
	if err := keys.CheckAll(p.Keys); err != nil {
		return fmt.Errorf("%w: %w: %w", ErrBadPayload, err, asynq.SkipRetry)
	}
	return nil
}

func badPayload(format string, args ...any) error {
	return fmt.Errorf("%w: %s: %w", ErrBadPayload, fmt.Sprintf(format, args...), asynq.SkipRetry)
}
