/** Where the transport layer reports what it handled but an operator should see (Nest's Logger fits). */
export interface ProtocolLogger {
  warn(message: string): void;
}
