package blockingnet

import (
	"context"
	"crypto/tls"
	"net"
	"time"
)

// Dialer returns a dial function (the signature of go-redis's
// Options.Dialer) whose connections are Conns, with TLS on top when cfg is
// set.
func Dialer(timeout time.Duration, cfg *tls.Config) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		bc, err := Wrap(c)
		if err != nil {
			c.Close()
			return nil, err
		}
		if cfg == nil {
			return bc, nil
		}
		// The dial timeout covers the handshake too, as tls.DialWithDialer's.
		if timeout > 0 {
			bc.SetDeadline(time.Now().Add(timeout))
		}
		tc := tls.Client(bc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			tc.Close()
			return nil, err
		}
		bc.SetDeadline(time.Time{})
		return tc, nil
	}
}
