// JSON requests to the head's dashboard API (see dashboard/API.md).

export class ApiError extends Error {
  constructor(message, status, path) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.path = path;
  }
}

let redirecting = false;

/**
 * Sends one request and returns the parsed JSON.
 * Throws ApiError with the server's {"error": ...} text on 4xx/5xx; on 401 goes to /login.
 */
export async function request(path, { method = 'GET', body } = {}) {
  const init = { method, credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(`cannot reach the head (${e && e.message ? e.message : e})`, 0, path);
  }
  if (res.status === 401) {
    if (!redirecting) {
      redirecting = true;
      window.location.assign('/login');
    }
    throw new ApiError('not logged in', 401, path);
  }
  const text = await res.text();
  let data = null;
  let parsed = false;
  if (text) {
    try {
      data = JSON.parse(text);
      parsed = true;
    } catch (e) {
      parsed = false;
    }
  }
  if (!res.ok) {
    const msg = parsed && data && typeof data.error === 'string' ? data.error : `${res.status} ${res.statusText || 'error'}`;
    throw new ApiError(msg, res.status, path);
  }
  if (!parsed) throw new ApiError('the answer was not JSON', res.status, path);
  return data;
}

export const get = (path) => request(path);
export const post = (path, body) => request(path, { method: 'POST', body: body === undefined ? {} : body });

/** Path segment encoding for names and ids. */
export const seg = (s) => encodeURIComponent(String(s));

/** Query string from an object (undefined/null values dropped). */
export function qs(obj) {
  const parts = [];
  for (const [k, v] of Object.entries(obj)) {
    if (v === undefined || v === null || v === '') continue;
    parts.push(encodeURIComponent(k) + '=' + encodeURIComponent(v));
  }
  return parts.length ? '?' + parts.join('&') : '';
}
