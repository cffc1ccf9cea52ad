/**
 * The permission flags the compiled binary gets. Tests run `main.ts` with
 * exactly these, so a missing permission fails a test, not a user.
 */
export const PERMISSION_FLAGS: readonly string[] = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--no-prompt",
];
