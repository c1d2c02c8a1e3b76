// Why the gateway refused this wall, in words, and what the operator should do.
//
// Two ways to learn it:
// - a close code after which the client does not reconnect (client.js NO_RECONNECT,
//   docs/protocol.md "WebSocket close codes"): WORDS below has an entry for each (a
//   test keeps them equal to the gateway's table);
// - a refused handshake (HTTP 401 or 403 before the upgrade): a browser's WebSocket
//   only sees "1006" and an EventSource only an error, so `diagnose` asks /api/meta
//   with the same token and Origin (the same checks as the streams) and reads the
//   status and the gateway's message.

export const WORDS = Object.freeze({
  1000: ["the gateway ended the connection", "reload the wall"],
  1002: ["protocol error", "update the wall: its client broke the protocol"],
  1003: ["protocol error (binary message)", "update the wall: its client broke the protocol"],
  1007: ["protocol error (invalid UTF-8)", "update the wall: its client broke the protocol"],
  1008: ["a message did not arrive whole in time", "check the network between the wall and the gateway, then reload"],
  1009: ["message too big", "update the wall, or raise the gateway's max_message_bytes"],
  4001: ["token rejected", "give the wall a valid token (?token=... or #token=...)"],
  4400: ["too many protocol errors", "update the wall: its client broke the protocol"],
  401: ["token rejected", "give the wall a valid token (?token=... or #token=...)"],
  403: ["this page's origin is not allowed", "open the wall from an address in the gateway's server.allowed_origins"],
});

// The banner's text for a refusal {code, reason}, or "" when the code needs no words
// (the client reconnects by itself).
export function refusalText({ code, reason = "" }) {
  const words = WORDS[code];
  if (!words) return "";
  const [what, todo] = words;
  const detail = reason && !what.includes(reason) ? ` (${reason})` : "";
  return `Connection refused: ${what}${detail}: ${todo}`;
}

// After a connection that never opened: {code: 401|403, reason} when the gateway
// refuses this wall's token or origin, else null (down, overloaded, or fine).
export async function diagnose(base, token) {
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const res = await fetch(new URL("api/meta", base), { cache: "no-store", headers });
    if (res.status !== 401 && res.status !== 403) return null;
    const text = await res.text();
    let reason = text.trim();
    try { reason = JSON.parse(text).message || reason; } catch { /* plain text */ }
    return { code: res.status, reason: reason.slice(0, 200) };
  } catch {
    return null;
  }
}
