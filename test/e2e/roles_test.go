package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/client"
	"github.com/memcuda/memcuda/pkg/queueclient"
)

func pattern(i int, seed byte) byte { return byte(i*7) ^ seed }

// runRole is the body of a client process.
func runRole(role string) int {
	if err := role1(role); err != nil {
		fmt.Fprintln(os.Stderr, role+":", err)
		return 1
	}
	return 0
}

func role1(role string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := os.Getenv("E2E_NAME")
	size, _ := strconv.Atoi(os.Getenv("E2E_SIZE"))
	seed := byte(len(name))
	verify := func(b []byte) error {
		if len(b) != size {
			return fmt.Errorf("tensor has %d bytes, want %d", len(b), size)
		}
		for i := range b {
			if b[i] != pattern(i, seed) {
				return fmt.Errorf("byte %d is %d, want %d", i, b[i], pattern(i, seed))
			}
		}
		return nil
	}
	switch role {
	case "writer":
		c, err := client.Dial(ctx, "")
		if err != nil {
			return err
		}
		defer c.Close()
		t, err := c.Create(ctx, name, "u8", []int64{int64(size)})
		if err != nil {
			return err
		}
		for i := range t.Bytes() {
			t.Bytes()[i] = pattern(i, seed)
		}
		fmt.Println("ok")
	case "reader-socket":
		c, err := client.Dial(ctx, "")
		if err != nil {
			return err
		}
		defer c.Close()
		t, err := c.Get(ctx, name)
		if err != nil {
			return err
		}
		if err := verify(t.Bytes()); err != nil {
			return err
		}
		t.Bytes()[0] = 0xEE // a write the next process must see
		fmt.Println("ok")
	case "reader-redis":
		opt, _ := redis.ParseURL(os.Getenv("E2E_REDIS_URL"))
		rdb := redis.NewClient(opt)
		defer rdb.Close()
		q := queueclient.New(rdb, os.Getenv("E2E_PREFIX"))
		r, err := q.Do(ctx, v1.Command{Op: v1.OpGet, Name: name, PID: os.Getpid()})
		if err != nil {
			return err
		}
		m, err := queueclient.MapHost(*r.Tensor)
		if err != nil {
			return err
		}
		b := m.Bytes()
		if b[0] != 0xEE {
			return fmt.Errorf("byte 0 is %#x, the socket reader wrote 0xee", b[0])
		}
		b[0] = pattern(0, seed)
		if err := verify(b); err != nil {
			return err
		}
		m.Close()
		if _, err := q.Do(ctx, v1.Command{Op: v1.OpRelease, Name: name, PID: os.Getpid()}); err != nil {
			return err
		}
		fmt.Println("ok")
	case "holder":
		c, err := client.Dial(ctx, "")
		if err != nil {
			return err
		}
		for i := 0; i < 3; i++ {
			if _, err := c.Get(ctx, name); err != nil {
				return err
			}
		}
		fmt.Println("ready")
		time.Sleep(time.Hour)
	case "queue-holder":
		opt, _ := redis.ParseURL(os.Getenv("E2E_REDIS_URL"))
		q := queueclient.New(redis.NewClient(opt), os.Getenv("E2E_PREFIX"))
		for i := 0; i < 2; i++ {
			if _, err := q.Do(ctx, v1.Command{Op: v1.OpGet, Name: name, PID: os.Getpid()}); err != nil {
				return err
			}
		}
		fmt.Println("ready")
		time.Sleep(time.Hour)
	default:
		return fmt.Errorf("unknown role")
	}
	return nil
}
