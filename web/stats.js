/* Consult stats (served at /consult/stats.js): the SFU's per-participant numbers shown to the
 * provider, and this page's own summary sent to the server.
 */
import { $ } from '/page.js';
import { LAYER_NAMES, S, wsOpen, send } from '/consult/state.js';

export function onStats(list) {
  list.forEach(function (s) {
    if (!s || !s.participant) return;
    S.stats[s.participant] = s;
    renderStats(s.participant);
  });
}

function kbps(bps) { return Math.round((bps || 0) / 1000) + ' kbps'; }

export function renderStats(pid) {
  var el = $('stats-' + pid);
  var s = S.stats[pid];
  if (!el || !s) return;
  // The layer is the simulcast layer of the provider's video this participant receives.
  var layer = pid === S.participant ? '' : ' · ' + (s.layer === null || s.layer === undefined ? 'no video'
    : (LAYER_NAMES[s.layer] || ('layer ' + s.layer)) + ' video');
  el.textContent = (s.connected ? 'Connected' : 'Not connected') + ' · sending ' + kbps(s.bitrate_in_bps) +
    ' · receiving ' + kbps(s.bitrate_out_bps) + layer + (s.transport === 'tcp' ? ' · over TCP (UDP blocked)' : '');
  el.className = 'stats' + (s.connected ? '' : ' bad');
}

// A small summary of this page's own numbers for the server (bounded map of numbers).
export async function reportStats() {
  var pc = S.pc;
  if (!pc || !wsOpen()) return;
  var r = {};
  try {
    var stats = await pc.getStats();
    var fps = 0, lost = 0, recv = 0, decoded = 0;
    stats.forEach(function (s) {
      if (s.type === 'inbound-rtp') {
        lost += s.packetsLost || 0; recv += s.packetsReceived || 0;
        if (s.kind === 'video') { decoded += s.framesDecoded || 0; fps = Math.max(fps, s.framesPerSecond || 0); }
      } else if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
        if (typeof s.currentRoundTripTime === 'number') r.rtt_ms = Math.round(s.currentRoundTripTime * 1000);
        if (typeof s.availableOutgoingBitrate === 'number') r.available_out_bps = Math.round(s.availableOutgoingBitrate);
      }
    });
    r.packets_received = recv; r.packets_lost = lost; r.frames_decoded = decoded; r.video_fps = fps;
  } catch (e) { return; }
  send({ type: 'stats', report: r });
}
