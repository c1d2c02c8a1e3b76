// The wall's token from the URL fragment, kept out of history and logs.
//
// Open the wall as http://gateway/#token=SECRET: a fragment never reaches a server
// (no access log, no Referer), and this removes it from the address bar and the
// history entry (history.replaceState) before anything else runs. ?token= in the
// query still works but stays in the history; prefer the fragment.

export function takeFragmentToken(loc = globalThis.location, hist = globalThis.history) {
  if (!loc || !loc.hash || !loc.hash.startsWith("#")) return null;
  const params = new URLSearchParams(loc.hash.slice(1));
  const token = params.get("token");
  if (!token) return null;
  params.delete("token");
  const rest = params.toString();
  hist?.replaceState(hist.state, "", loc.pathname + loc.search + (rest ? `#${rest}` : ""));
  return token;
}
