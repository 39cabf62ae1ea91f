/** Errors of libs/privacy. */

/** A secure-aggregation round cannot go on (too few clients or shares, inconsistent state). */
export class SecAggError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SecAggError';
  }
}

/** Why one message was not accepted (malformed, forged, duplicate, unexpected sender). */
export interface Rejection {
  /** The claimed sender, where the message named one. */
  readonly clientId?: string;
  readonly round: 'advertise' | 'share-keys' | 'masked-input' | 'unmask';
  readonly reason: string;
}

/** A message a client must not accept (forged share, wrong recipient, bad length). */
export class MessageRejectedError extends Error {
  constructor(readonly rejection: Rejection) {
    super(
      `${rejection.round}: ${rejection.clientId === undefined ? '' : `from ${rejection.clientId}: `}${rejection.reason}`,
    );
    this.name = 'MessageRejectedError';
  }
}
